"""Tiny random-weight Qwen-Image files in the layouts people download, for tests and the playground.

`make_tiny_qwen_image` writes the transformer as Comfy-Org ship it (diffusers' names; alone, or
all-in-one under `model.diffusion_model.` with its parts beside it); `make_tiny_qwen_image_parts`
writes the parts where a user keeps them: models/text_encoders/qwen_2.5_vl_7b.safetensors (Qwen's own
names: `model.layers.…`, `visual.…`, `lm_head.weight`) and models/VAE/qwen_image_vae.safetensors (Wan
2.1's original layout: `encoder.downsamples.…`, `decoder.upsamples.…`, `conv1`, `conv2`), of the real
models' block structure at tiny widths.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from common.bundled import CONFIG_ROOT
from gpu_worker.testing.tiny_flux import write_part, write_transformer_file

FOLDER = CONFIG_ROOT / "tiny-qwen-image"
IN_FILE = {"qwen25vl": "text_encoders.qwen25_7b.transformer.", "vae": "vae."}
PART_FILES = {"qwen25vl": ("text_encoders", "qwen_2.5_vl_7b.safetensors"), "vae": ("VAE", "qwen_image_vae.safetensors")}


def _config(part: str) -> dict:
    return json.loads((FOLDER / part / "config.json").read_text())


def _settings(part: str) -> dict:
    return {k: v for k, v in _config(part).items() if not k.startswith("_")}


def transformer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed * 16 + 10)
    model = QwenImageTransformer2DModel(**_settings("transformer"))
    # diffusers zero-initialises the output layers: random, so that every layer reaches the picture
    return {k: (torch.randn_like(v) * 0.2 if not v.any() else v) for k, v in model.state_dict().items()}


def text_encoder_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random Qwen2.5-VL in Qwen's own names, in bf16 as released."""
    torch.manual_seed(seed * 16 + 11)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**_config("text_encoder")))
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.visual."):
            key = key.removeprefix("model.")
        elif key.startswith("model.language_model."):
            key = "model." + key.removeprefix("model.language_model.")
        out[key] = value.to(torch.bfloat16)
    return out


@cache
def _wan_names() -> dict[str, str]:
    """diffusers' name -> Wan's original name for every tensor of the tiny VAE: the inverse of
    diffusers' own converter, found by running it on every name the original layout can have."""
    suffixes = (
        "residual.0.gamma", "residual.2.weight", "residual.2.bias", "residual.3.gamma", "residual.6.weight",
        "residual.6.bias", "shortcut.weight", "shortcut.bias", "resample.1.weight", "resample.1.bias",
        "time_conv.weight", "time_conv.bias",
    )  # fmt: skip
    candidates = [f"{side}.{blocks}.{i}.{s}" for side, blocks in (("encoder", "downsamples"), ("decoder", "upsamples")) for i in range(16) for s in suffixes]
    candidates += [f"{side}.middle.{i}.{s}" for side in ("encoder", "decoder") for i in (0, 2) for s in suffixes[:6]]
    candidates += [f"{side}.middle.1.{s}" for side in ("encoder", "decoder") for s in ("norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias")]
    candidates += [f"{side}.{s}" for side in ("encoder", "decoder") for s in ("head.0.gamma", "head.2.weight", "head.2.bias", "conv1.weight", "conv1.bias")]
    candidates += ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    converted = convert_wan_vae_to_diffusers({name: name for name in candidates})
    return {theirs: ours for theirs, ours in converted.items() if theirs != ours or ours in candidates}


def vae_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random Qwen-Image VAE in Wan 2.1's original layout."""
    torch.manual_seed(seed * 16 + 12)
    model = AutoencoderKLQwenImage(**_settings("vae"))
    names = _wan_names()
    state = model.state_dict()
    missing = sorted(set(state) - set(names))
    if missing:
        raise ValueError(f"no original name for the VAE's {missing[0]}")
    return {names[k]: v for k, v in state.items()}


def make_tiny_qwen_image(out: Path, seed: int = 0, shape: str = "transformer", edit: bool = False) -> Path:
    """A tiny Qwen-Image file (Qwen-Image-Edit Plus, as 2509 and 2511, when `edit`: its metadata says so)."""
    name = "Qwen-Image-Edit Plus" if edit else "Qwen-Image"

    def parts() -> dict[str, dict[str, torch.Tensor]]:
        return {IN_FILE["qwen25vl"]: text_encoder_state(seed), IN_FILE["vae"]: vae_state(seed)}

    return write_transformer_file(
        out, shape, lambda: transformer_state(seed), parts, name, name.lower().replace(" ", "-"), seed
    )


def make_tiny_qwen_image_parts(models: Path, seed: int = 0) -> list[Path]:
    """The parts a transformer-only tiny Qwen-Image file of `seed` runs with, where a user keeps them."""
    return [
        write_part(models, folder, name, text_encoder_state(seed) if role == "qwen25vl" else vae_state(seed),
                   "Qwen2.5-VL" if role == "qwen25vl" else "Qwen-Image VAE (Wan 2.1 layout)", seed)
        for role, (folder, name) in PART_FILES.items()
    ]  # fmt: skip


def make_tiny_qwen_image_lora(out: Path, seed: int = 0) -> Path:
    """A tiny Qwen-Image LoRA as ai-toolkit and musubi-tuner write them for ComfyUI
    (`diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight`), on the attention and the
    picture stream's MLP of the tiny transformer."""
    from gpu_worker.testing.tiny_networks import save_tiny_transformer_lora, transformer_lora_state

    with torch.device("meta"):
        model = QwenImageTransformer2DModel(**_settings("transformer"))
    targets = (".attn.to_q", ".attn.to_k", ".attn.to_v", ".attn.add_q_proj", ".img_mlp.net.0.proj")
    state = transformer_lora_state(model, "diffusion_model.", targets, seed)
    return save_tiny_transformer_lora(state, out, "Easel tiny Qwen-Image LoRA (random weights)", seed)
