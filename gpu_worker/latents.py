"""Every VAE call the worker makes — the pipelines are given latents and return latents, so this
is the only place a VAE encodes or decodes: pictures in and out of a pipeline's latent space, as its
VAE's config says — scaled by `scaling_factor`, shifted by `shift_factor` (Flux, SD3), and for an
EDM model (Playground v2.5) centred by `latents_mean` and `latents_std`, as diffusers' pipelines do.

Inputs go to the VAE's device and the dtype the call runs in; results come back in the dtype the VAE
is held in. Pictures past `TILE_PIXELS` are encoded and decoded in tiles (diffusers' tiled VAE).

Half precision (A1111's "Automatically revert VAE to 32-bit floats", on by default there): a call to
a VAE held in fp16 runs in fp16 and its result is checked; a result with NaN or infinite values (the
SDXL VAE's activations overflow fp16: black pictures) is computed again in float32, and that VAE's
calls run in float32 from then on. The VAE is cast back to fp16 after each such call whatever
happens, an out-of-memory error included, so the cached model stays whole. Why judge by the result
and not by the config's `force_upcast`: a single file's config is its family's (the bundled one),
so it says `force_upcast` for every SDXL checkpoint, also for the many that carry the SDXL fp16-fix
VAE, which runs in fp16 without overflowing. `EASEL_VAE_PRECISION=full` (A1111's `--no-half-vae`)
holds every VAE in float32 instead (gpu_worker/loader.py).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from PIL import Image

log = logging.getLogger(__name__)

TILE_PIXELS = 2048 * 2048  # past this many pixels a call is tiled: an untiled SDXL decode needs ~15 GB there

# VAEs held in fp16 whose results overflowed: their calls run in float32 from then on.
_OVERFLOWS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def runs_in(vae) -> torch.dtype:
    """The dtype a call to this VAE starts in."""
    if vae.dtype == torch.float16 and vae in _OVERFLOWS:
        return torch.float32
    return vae.dtype


@contextmanager
def _running(vae, dtype: torch.dtype) -> Iterator[None]:
    """The VAE in `dtype` for the call (tiled past the size), as it was after."""
    had, tiled = vae.dtype, getattr(vae, "use_tiling", False)
    if dtype != had:
        vae.to(dtype=dtype)
    try:
        yield
    finally:
        if dtype != had:
            vae.to(dtype=had)
        if hasattr(vae, "use_tiling"):
            vae.use_tiling = tiled


def _call(vae, pixels: int, compute: Callable[[torch.dtype], torch.Tensor]) -> torch.Tensor:
    """`compute` in the dtype this VAE's calls run in; again in float32 if fp16 overflowed."""

    def attempt(dtype: torch.dtype) -> torch.Tensor:
        with _running(vae, dtype), torch.no_grad():
            if pixels > TILE_PIXELS and hasattr(vae, "enable_tiling"):
                vae.enable_tiling()
            return compute(dtype)

    dtype = runs_in(vae)
    result = attempt(dtype)
    if dtype == torch.float16 and not torch.isfinite(result).all():
        _OVERFLOWS.add(vae)
        log.warning("the VAE overflowed half precision (NaN or infinite values): it runs in float32 from now on")
        result = attempt(torch.float32)
    return result


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None
    shape = (1, len(mean)) + (1,) * (like.ndim - 2)  # a video VAE's latents have a frame axis too
    return (
        torch.tensor(mean).view(shape).to(like.device, like.dtype),
        torch.tensor(std).view(shape).to(like.device, like.dtype),
    )


def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in -1..1 -> the latents a sampler works on (the distribution's mode)."""
    had = vae.dtype
    area = pixels.shape[-1] * pixels.shape[-2]
    if pixels.ndim == 4 and getattr(vae.config, "z_dim", None):  # a video VAE (Qwen-Image's) reads one frame
        pixels = pixels.unsqueeze(2)
    latent = _call(vae, area, lambda dtype: vae.encode(pixels.to(vae.device, dtype)).latent_dist.mode())
    stats = _stats(vae, latent)
    if stats is not None:
        latent = (latent - stats[0]) * _scaling(vae) / stats[1]
    else:
        latent = (latent - (getattr(vae.config, "shift_factor", None) or 0.0)) * _scaling(vae)
    return latent.to(had)


def _scaling(vae) -> float:
    """The VAE's latent scale (a video VAE, Qwen-Image's, has none: its statistics alone)."""
    return getattr(vae.config, "scaling_factor", None) or 1.0


def _downscale(vae) -> int:
    """Pixels per latent cell: 2 per level of a picture VAE's blocks, of a video VAE's downsampling."""
    levels = getattr(vae.config, "block_out_channels", None)
    return 2 ** (len(levels) - 1) if levels is not None else 2 ** len(vae.config.temperal_downsample)


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """A sampler's latents -> pixels in -1..1, (B, 3, H, W): a video VAE's one frame taken out."""
    had = vae.dtype
    stats = _stats(vae, latents)
    if stats is not None:
        latents = latents * stats[1] / _scaling(vae) + stats[0]
    else:
        latents = latents / _scaling(vae) + (getattr(vae.config, "shift_factor", None) or 0.0)
    scale = _downscale(vae)
    area = latents.shape[-1] * latents.shape[-2] * scale * scale
    pixels = _call(vae, area, lambda dtype: vae.decode(latents.to(vae.device, dtype), return_dict=False)[0]).to(had)
    return pixels[:, :, 0] if pixels.ndim == 5 else pixels


def encode_pictures(pipe, pictures: list[Image.Image]) -> torch.Tensor:
    """Pictures -> latents for a pipeline's `image` argument (which takes latents as they are): (B, C,
    H, W), a video VAE's one frame taken out (Qwen-Image's img2img puts its frame axis back)."""
    latents = encode(pipe.vae, pipe.image_processor.preprocess(pictures))
    return latents[:, :, 0] if latents.ndim == 5 else latents


def decode_pictures(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """A pipeline's output latents -> its pictures."""
    return pipe.image_processor.postprocess(decode(pipe.vae, latents), output_type="pil")
