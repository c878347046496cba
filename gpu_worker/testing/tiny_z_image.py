"""Tiny random-weight Z-Image files in the layouts people download, for tests and the playground.

`make_tiny_z_image` writes the transformer as Comfy-Org ship it (z_image_turbo_bf16.safetensors: fused
`attention.qkv`, `attention.out`, `q_norm`/`k_norm`, `x_embedder`, `final_layer`), alone or
all-in-one (under `model.diffusion_model.`, with its Qwen3 text encoder and VAE beside it);
`make_tiny_z_image_parts` writes the separate parts where a user keeps them: models/text_encoders/
qwen_3_4b.safetensors (Qwen3's `model.…` names, bf16 as released) and models/VAE/ae.safetensors
(the tiny FLUX.1 VAE of the same seed: Z-Image's VAE is FLUX.1's).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model

from common.bundled import CONFIG_ROOT
from gpu_worker.testing.tiny_flux import FOLDER as FLUX_FOLDER
from gpu_worker.testing.tiny_flux import part_state, write_part, write_transformer_file

FOLDER = CONFIG_ROOT / "tiny-z-image"
IN_FILE = {"qwen3": "text_encoders.qwen3_4b.transformer.", "vae": "vae."}
PART_FILES = {"qwen3": ("text_encoders", "qwen_3_4b.safetensors"), "vae": ("VAE", "ae.safetensors")}
_RENAMES = (
    ("all_x_embedder.2-1.", "x_embedder."),
    ("all_final_layer.2-1.", "final_layer."),
    (".attention.to_out.0.", ".attention.out."),
    (".attention.norm_q.", ".attention.q_norm."),
    (".attention.norm_k.", ".attention.k_norm."),
)


def _config(part: str, folder: Path) -> dict:
    return json.loads((folder / part / "config.json").read_text())


def transformer_state(seed: int = 0, folder: Path = FOLDER) -> dict[str, torch.Tensor]:
    """Random transformer weights in ComfyUI's layout (the inverse of diffusers' single-file converter)."""
    torch.manual_seed(seed * 16 + 8)
    model = ZImageTransformer2DModel.from_config(_config("transformer", folder))
    state = {}
    for key, value in model.state_dict().items():
        # diffusers zero-initialises some layers (the final projection, the pad tokens): random, so
        # every layer's weights reach the picture
        value = torch.randn_like(value) * 0.2 if not value.any() else value
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [model.state_dict()[key.replace(".to_q.", f".to_{p}.")] for p in "qkv"]
            state[key.replace(".to_q.", ".qkv.")] = torch.cat(parts, dim=0)
            continue
        for theirs, ours in _RENAMES:
            key = key.replace(theirs, ours)
        state[key] = value
    return state


def qwen3_state(seed: int = 0, folder: Path = FOLDER) -> dict[str, torch.Tensor]:
    """A random Qwen3 text encoder as qwen_3_4b.safetensors names it (`model.…`), in bf16."""
    torch.manual_seed(seed * 16 + 9)
    model = Qwen3Model(Qwen3Config(**_config("text_encoder", folder)))
    return {f"model.{k}": v.to(torch.bfloat16) for k, v in model.state_dict().items()}


def make_tiny_z_image(out: Path, seed: int = 0, shape: str = "transformer", base: bool = False) -> Path:
    """A tiny Z-Image file: the transformer alone (as Comfy-Org ship it) or all-in-one; Base when
    `base` (its metadata says so), else Turbo."""
    variant = "Base" if base else "Turbo"

    def parts() -> dict[str, dict[str, torch.Tensor]]:
        return {IN_FILE["qwen3"]: qwen3_state(seed), IN_FILE["vae"]: part_state("vae", seed, FLUX_FOLDER)}

    return write_transformer_file(
        out, shape, lambda: transformer_state(seed), parts, f"Z-Image {variant}", f"z-image-{variant.lower()}", seed
    )


def make_tiny_z_image_parts(models: Path, seed: int = 0) -> list[Path]:
    """The parts a transformer-only tiny Z-Image file of `seed` runs with, where a user keeps them."""
    return [
        write_part(models, folder, name, qwen3_state(seed) if role == "qwen3" else part_state("vae", seed, FLUX_FOLDER),
                   "Qwen3" if role == "qwen3" else "FLUX.1 VAE", seed)
        for role, (folder, name) in PART_FILES.items()
    ]  # fmt: skip


def make_tiny_z_image_lora(out: Path, seed: int = 0) -> Path:
    """A tiny Z-Image LoRA as ai-toolkit and DiffSynth write them for ComfyUI (`diffusion_model.layers.
    0.attention.to_q.lora_A.weight`): on the attention and feed-forward layers of the tiny transformer."""
    from gpu_worker.testing.tiny_networks import save_tiny_transformer_lora, transformer_lora_state

    with torch.device("meta"):
        model = ZImageTransformer2DModel.from_config(_config("transformer", FOLDER))
    targets = (".attention.to_q", ".attention.to_k", ".attention.to_v", ".feed_forward.w1")
    # Small: the tiny Z-Image's feed-forward layers amplify (strength 0.05 at 0.5 here already changed
    # the picture as much as strength 1), and a test compares strengths
    state = transformer_lora_state(model, "diffusion_model.", targets, seed, strength=0.02)
    return save_tiny_transformer_lora(state, out, "Easel tiny Z-Image LoRA (random weights)", seed)
