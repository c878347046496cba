"""A1111's inpainting options beyond the mask: "Masked content" and "Inpaint area".

Followed (facts, not code) from AUTOMATIC1111 modules/processing.py (StableDiffusionProcessingImg2Img
`init`) and modules/masking.py:
- Masked content. `original` keeps the picture under the mask as the start; `fill` first paints the
  masked part with the colours around it (the picture blurred wider and wider, composited over
  itself); `latent noise` puts random noise (from the job's seed) in place of the masked latent;
  `latent nothing` puts zeros there. The latent mask is the blurred mask at latent size, rounded.
- Inpaint area `Only masked`: the bounding box of the (blurred) mask, widened by "Masked area
  padding" pixels and then to the job's aspect ratio, is cut out, enlarged to the job's size,
  redrawn there, shrunk back and pasted in; the overlay then keeps everything outside the mask.
  A1111 pastes into the picture at its uploaded size; here the picture is first fitted to the job's
  size (the resize mode), so the result has the job's size as every other job's does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from gpu_worker.latents import encode
from gpu_worker.noise import first_draw

if TYPE_CHECKING:
    from gpu_worker.families.base import BatchRun

# (blur radius, times composited), widest first: far pixels give the masked area its colour, near ones its detail.
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def fill_masked(picture: Image.Image, mask: Image.Image) -> Image.Image:
    """The picture with its masked part painted over by the colours around it (A1111's `fill`)."""
    keep = ImageOps.invert(mask.convert("L"))
    # Premultiplied alpha: a blur of the kept pixels alone, not of the kept pixels and black.
    known = Image.new("RGBa", picture.size)
    known.paste(picture.convert("RGBA").convert("RGBa"), mask=keep)
    filled = Image.new("RGBA", picture.size)
    for radius, times in _FILL_PASSES:
        blurred = (known.filter(ImageFilter.GaussianBlur(radius)) if radius else known).convert("RGBA")
        for _ in range(times):
            filled.alpha_composite(blurred)
    return filled.convert("RGB")


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The part of the picture "Only masked" redraws: (left, top, right, bottom), or None for an
    empty mask. The mask's box plus `padding`, then widened to width:height inside the picture."""
    box = mask.convert("L").point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    image_w, image_h = mask.size
    left, top = max(box[0] - padding, 0), max(box[1] - padding, 0)
    right, bottom = min(box[2] + padding, image_w), min(box[3] + padding, image_h)
    ratio = width / height
    w, h = right - left, bottom - top
    if w / h < ratio:  # too narrow: widen around its centre, inside the picture
        left, right = _widen(left, right, min(round(h * ratio), image_w), image_w)
    else:
        top, bottom = _widen(top, bottom, min(round(w / ratio), image_h), image_h)
    return left, top, right, bottom


def _widen(low: int, high: int, size: int, limit: int) -> tuple[int, int]:
    extra = size - (high - low)
    low = max(0, low - extra // 2)
    high = low + size
    if high > limit:
        low, high = limit - size, limit
    return low, high


def latent_mask(mask: Image.Image, latent_size: tuple[int, int]) -> torch.Tensor:
    """1 where the latent is redrawn: the blurred mask at latent size, rounded (A1111's `latmask`:
    a resize without a filter named, which is Pillow's bicubic)."""
    small = mask.convert("L").resize(latent_size, Image.Resampling.BICUBIC)
    return torch.from_numpy(np.around(np.asarray(small, dtype=np.float32) / 255))[None, None]


def masked_start(pipe, picture: Image.Image, mask: Image.Image, mode: str, seeds: list[int], rng: str, device: str) -> torch.Tensor:
    """The start latents for `latent noise` / `latent nothing`: the picture's latent with its masked
    part replaced by noise from each image's seed (the job's noise source, a first draw as A1111's
    `create_random_tensors`), or by zeros."""
    latent = encode(pipe.vae, pipe.image_processor.preprocess(picture))
    where = latent_mask(mask, (latent.shape[-1], latent.shape[-2])).to(latent.device, latent.dtype)
    starts = []
    for seed in seeds:
        if mode == "latent noise":
            fill = first_draw(rng, device, seed, tuple(latent.shape[1:]))[None].to(latent.device, latent.dtype)
        else:
            fill = torch.zeros_like(latent)
        starts.append(latent * (1 - where) + fill * where)
    return torch.cat(starts)


def masked_picture_latents(pipe, picture: Image.Image, mask: Image.Image, n: int) -> torch.Tensor:
    """An inpainting checkpoint's masked-picture input, when the start is a latent: the picture with
    the masked part grey, encoded (what the pipeline computes itself from a picture)."""
    pixels = pipe.image_processor.preprocess(picture)
    keep = pipe.mask_processor.preprocess(mask) < 0.5
    return encode(pipe.vae, pixels * keep).repeat(n, 1, 1, 1)


def prepare_inpainting(run: BatchRun) -> None:
    """Inpaint area and masked content (gpu_worker/inpaint_options.py) applied to the batch's
    picture and mask; what the overlay needs afterwards is kept."""
    batch = run.batch
    assert run.init is not None and run.mask is not None
    size = (batch.width, batch.height)
    box = crop_region(run.mask, batch.parameters.mask_padding, *size) if batch.parameters.only_masked else None
    if box is not None:  # Only masked: that region, enlarged to the job's size
        run.paste = (run.init, run.mask, box)
        run.init = run.init.crop(box).resize(size, Image.Resampling.LANCZOS)
        run.mask = run.mask.crop(box).resize(size, Image.Resampling.LANCZOS)
    run.original = run.init  # the overlay keeps the picture as it was, not as filled
    if batch.parameters.masked_content == "fill":
        run.init = fill_masked(run.init, run.mask)


def overlay(run: BatchRun, images: list[Image.Image]) -> list[Image.Image]:
    """A1111's overlay: outside the (blurred) mask, the picture as it was; with Only masked, the
    region shrunk back and pasted into the whole picture first."""
    out = []
    for image in images:
        picture, mask = run.original, run.mask
        if run.paste is not None:
            picture, mask, box = run.paste
            whole = picture.copy()
            whole.paste(image.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS), box[:2])
            image = whole
        out.append(Image.composite(image, picture, mask))
    return out
