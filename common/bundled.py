"""Where the bundled diffusers configs and tokenizers live (what a hub would otherwise serve).

Both sides read them: the worker builds pipelines from them, the bot counts and shows tokens."""

from __future__ import annotations

from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"

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
    "sd35",
    "sd35-medium",
    "sd35-all-in-one",
)
