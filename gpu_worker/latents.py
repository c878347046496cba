"""Pictures in and out of a pipeline's latent space, as its VAE's config says: scaled by
`scaling_factor`, and for an EDM model (Playground v2.5) also centred by `latents_mean` and
`latents_std` (what diffusers' SDXL pipelines do when they encode and decode themselves)."""

from __future__ import annotations

import torch


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None
    shape = (1, len(mean), 1, 1)
    return (
        torch.tensor(mean).view(shape).to(like.device, like.dtype),
        torch.tensor(std).view(shape).to(like.device, like.dtype),
    )


def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in -1..1 -> the latents a sampler works on (the distribution's mode)."""
    with torch.no_grad():
        latent = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    stats = _stats(vae, latent)
    if stats is not None:
        return (latent - stats[0]) * vae.config.scaling_factor / stats[1]
    return latent * vae.config.scaling_factor


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """A sampler's latents -> pixels in -1..1."""
    stats = _stats(vae, latents)
    if stats is not None:
        latents = latents * stats[1] / vae.config.scaling_factor + stats[0]
    else:
        latents = latents / vae.config.scaling_factor
    with torch.no_grad():
        return vae.decode(latents.to(vae.device, vae.dtype), return_dict=False)[0]
