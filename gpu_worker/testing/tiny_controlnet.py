"""Random-weight ControlNets in the files' real layouts, tiny enough for tests: the original
ControlNet layout (A1111's `control_v11p_sd15_*.safetensors`/`.pth`) or diffusers' (most SDXL ones).

Made as ControlNets are trained from: a copy of the base UNet's encoder (`ControlNetModel.from_unet`
on the tiny checkpoint's UNet of the same seed), with random zero convolutions so the unit changes
the picture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel

from common.safetensors_writer import temp_path
from gpu_worker.ldm_layout import controlnet_to_ldm
from gpu_worker.save import save_atomically
from gpu_worker.testing.tiny import tiny_components

CONTROLNET_LAYOUTS = ("original", "diffusers")


def tiny_controlnet(base: str, seed: int = 0) -> ControlNetModel:
    unet = tiny_components(base, seed)["unet"]
    model = ControlNetModel.from_unet(unet)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for conv in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.5)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
    return model.eval()


def make_tiny_controlnet(base: str, out: Path, seed: int = 0, layout: str = "") -> Path:
    """A ControlNet for the tiny `base` checkpoint of `seed`, written to `out` (.safetensors, or .pth
    as a pickled state dict); `layout` original (SD1's default) or diffusers (SDXL's)."""
    model = tiny_controlnet(base, seed)
    layout = layout or ("diffusers" if base == "sdxl" else "original")
    state = model.state_dict()
    if layout == "original":
        state = controlnet_to_ldm(state, model.config)
    state = {k: v.contiguous() for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".pth":
        temp = temp_path(out)
        torch.save({"state_dict": state}, temp)
        temp.replace(out)
        return out
    return save_atomically(state, out, {"format": "pt"}, temp_path(out))
