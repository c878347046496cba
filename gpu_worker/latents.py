"""Every call Easel makes to a VAE itself (the pipelines make their own): pictures in and out of a
pipeline's latent space, as its VAE's config says — scaled by `scaling_factor`, shifted by
`shift_factor` (Flux, SD3), and for an EDM model (Playground v2.5) centred by `latents_mean` and
`latents_std`, as diffusers' pipelines do when they encode and decode themselves.

Half precision: a VAE whose config says `force_upcast` (SDXL's: its activations overflow fp16 into
black or NaN pictures) runs the call in float32, as diffusers' pipelines run theirs, and is cast back
afterwards whatever happens (an out-of-memory error included), so the cached model stays whole.
Inputs go to the VAE's device and dtype; results come back in the dtype the VAE had.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


def upcasts(vae) -> bool:
    """Whether a call to this VAE runs in float32: half precision, and a config that says so."""
    return vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))


@contextmanager
def _running(vae) -> Iterator[torch.dtype]:
    """The VAE in the dtype its calls run in, for the call; the dtype it had, restored after."""
    had = vae.dtype
    if not upcasts(vae):
        yield had
        return
    vae.to(dtype=torch.float32)
    try:
        yield torch.float32
    finally:
        vae.to(dtype=had)


def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in -1..1 -> the latents a sampler works on (the distribution's mode)."""
    had = vae.dtype
    with _running(vae) as dtype, torch.no_grad():
        latent = vae.encode(pixels.to(vae.device, dtype)).latent_dist.mode()
    stats = _stats(vae, latent)
    if stats is not None:
        latent = (latent - stats[0]) * vae.config.scaling_factor / stats[1]
    else:
        latent = (latent - (getattr(vae.config, "shift_factor", None) or 0.0)) * vae.config.scaling_factor
    return latent.to(had)


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """A sampler's latents -> pixels in -1..1."""
    had = vae.dtype
    stats = _stats(vae, latents)
    if stats is not None:
        latents = latents * stats[1] / vae.config.scaling_factor + stats[0]
    else:
        latents = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    with _running(vae) as dtype, torch.no_grad():
        return vae.decode(latents.to(vae.device, dtype), return_dict=False)[0].to(had)
