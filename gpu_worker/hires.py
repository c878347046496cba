"""The hires fix's middle step: pass one's result enlarged to pass two's size.

Followed (facts, not code) from AUTOMATIC1111 modules/processing.py `sample_hr_pass`: a latent
upscaler enlarges the latent itself with `interpolate` (the mode and antialiasing its name says), and
pass two starts from that latent; a picture upscaler decodes the latent, enlarges the picture, and
pass two encodes it again. An upscaler model is a picture upscaler (gpu_worker/upscale_models.py).
"""

from __future__ import annotations

import torch
from PIL import Image

from common.hires_upscalers import LATENT_UPSCALERS, PICTURE_UPSCALERS
from gpu_worker.latents import decode
from gpu_worker.upscale_models import Upscaler, upscale_picture


def upscale(pipe, latents: torch.Tensor, size: tuple[int, int], upscaler: str | Upscaler) -> torch.Tensor | list:
    """Pass two's input: an enlarged latent, or enlarged pictures (PIL)."""
    width, height = size
    if isinstance(upscaler, str) and upscaler in LATENT_UPSCALERS:
        mode, antialias = LATENT_UPSCALERS[upscaler]
        options = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
        scale = pipe.vae_scale_factor  # the VAE's own: 8 for SD's, 4 for the demo model's
        return torch.nn.functional.interpolate(latents, size=(height // scale, width // scale), mode=mode, **options)
    decoded = decode(pipe.vae, latents)
    return enlarge(pipe.image_processor.postprocess(decoded, output_type="pil"), size, upscaler)


def enlarge(pictures: list[Image.Image], size: tuple[int, int], upscaler: str | Upscaler) -> list[Image.Image]:
    """Pictures enlarged by a picture upscaler (a resampling filter or an upscaler model)."""
    if isinstance(upscaler, Upscaler):
        return [upscale_picture(upscaler, picture, size) for picture in pictures]
    resample = getattr(Image.Resampling, PICTURE_UPSCALERS[upscaler])
    return [picture.resize(size, resample) for picture in pictures]
