"""Tiny random-weight SD3.5 files in the real single-file layouts, for tests and the playground.

`make_tiny_sd3` writes SAI's shape (the MMDiT under `model.diffusion_model.`, the VAE under
`first_stage_model.`; CLIP-L, CLIP-G and T5-XXL separate, as sd3.5_large.safetensors comes) or an
all-in-one file with the encoders inside (ComfyUI's `text_encoders.*`, as
sd3_medium_incl_clips_t5xxlfp8.safetensors); Large's blocks (QK norm) or Medium's (a second
attention in the first blocks). `make_tiny_component` (gpu_worker/testing/tiny_flux.py) writes the separate
encoders with `folder=` this one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel

from common.bundled import CONFIG_ROOT
from common.safetensors_writer import temp_path
from gpu_worker.families.sd3_layout import to_original
from gpu_worker.model_parts import IN_FILE, TRANSFORMER_PREFIX
from gpu_worker.save import save_atomically
from gpu_worker.testing.tiny_flux import _config, _metadata, _seeded, part_state

FOLDER = CONFIG_ROOT / "tiny-sd3"
ARCHS = ("sd35", "sd35-medium", "sd35-all-in-one")


def transformer_state(seed: int = 0, medium: bool = False) -> dict[str, torch.Tensor]:
    """Random MMDiT weights in SAI's layout: Large's blocks, or Medium's (dual attention in block 0)."""
    _seeded("transformer", seed)
    settings = _config("transformer", FOLDER) | ({"dual_attention_layers": [0]} if medium else {})
    return to_original(SD3Transformer2DModel.from_config(settings).state_dict())


def make_tiny_sd3(out: Path, arch: str = "sd35", seed: int = 0) -> Path:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    state = {TRANSFORMER_PREFIX + k: v for k, v in transformer_state(seed, medium=arch == "sd35-medium").items()}
    state |= {f"first_stage_model.{k}": v for k, v in part_state("vae", seed, FOLDER).items()}
    if arch == "sd35-all-in-one":
        for role in ("clip_l", "clip_g", "t5xxl"):
            state |= {IN_FILE[role][0] + k: v for k, v in part_state(role, seed, FOLDER).items()}
    what = {"sd35": "Large blocks, SAI's shape", "sd35-medium": "Medium blocks, SAI's shape", "sd35-all-in-one": "all-in-one"}[arch]
    metadata = _metadata(f"Easel tiny SD3.5 ({what}, random weights)", seed)
    metadata["modelspec.architecture"] = "stable-diffusion-v3-medium" if arch == "sd35-medium" else "stable-diffusion-v3.5-large"
    return save_atomically({k: v.contiguous() for k, v in state.items()}, out, metadata, temp_path(out))
