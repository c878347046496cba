"""Previews of a step's latents: by a family's linear map (no VAE pass, A1111's "Approx cheap"),
or through the VAE (A1111's "Full") where no map is bundled (Flux's and SD3's 16-channel latents)."""

from __future__ import annotations

import io

import torch
from PIL import Image

from gpu_worker.latents import decode


def latents_to_images(latents: torch.Tensor, factors: list[list[float]], bias: list[float]) -> list[Image.Image]:
    """(B, C, h, w) latents -> B small RGB images of h x w, by the family's C x 3 map and bias."""
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


def vae_previews(pipe, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
    """Latents -> pictures through the VAE (gpu_worker/latents.py): Flux's packed ones (B, tokens, 64)
    unpacked first."""
    if latents.ndim == 3:  # Flux packs 2x2 patches into tokens
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    decoded = decode(pipe.vae, latents)
    pixels = ((decoded.float().cpu() + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p) for p in pixels]
