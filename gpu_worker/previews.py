"""Cheap previews: latents -> RGB by a linear map (no VAE pass), as A1111's "Approx cheap" does.

Factors from ComfyUI's latent_formats (SD15 and SDXL), fitted to each VAE's latent space.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

from common.protocol import FLOW_FAMILIES

_FACTORS = {
    "sd": (
        [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
        [0.0, 0.0, 0.0],
    ),
    "sdxl": (
        [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
        [0.1084, -0.0175, -0.0011],
    ),
}


def latents_to_images(latents: torch.Tensor, family: str) -> list[Image.Image]:
    """(B, 4, h, w) latents -> B small RGB images of h x w."""
    factors, bias = _FACTORS["sdxl" if family == "sdxl" else "sd"]
    cpu = torch.device("cpu")  # a few thousand numbers: on the CPU, where the PNG is made
    weight = torch.tensor(factors, dtype=torch.float32, device=cpu)
    rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().to(cpu), weight)
    rgb = rgb + torch.tensor(bias, dtype=torch.float32, device=cpu)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).numpy()
    return [Image.fromarray(p) for p in pixels]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decodes_previews(family: str, pipeline_config: str | None) -> bool:
    """Whether previews go through the VAE (A1111's "Full") rather than a linear map: no map is
    bundled for Flux's and SD3's 16-channel latent spaces, nor for the demo model's own small VAE,
    whose full decode at 64 px costs less than a step."""
    return family in FLOW_FAMILIES or (pipeline_config or "").startswith("demo-")


def vae_previews(pipe, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
    """Latents -> pictures through the VAE: Flux's packed ones (B, tokens, 64) unpacked first."""
    with torch.no_grad():
        if latents.ndim == 3:  # Flux packs 2x2 patches into tokens
            latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        config = pipe.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        decoded = pipe.vae.decode(latents.to(pipe.vae.dtype) / config.scaling_factor + shift).sample
    pixels = ((decoded.float().cpu() + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p) for p in pixels]
