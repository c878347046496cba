"""The input picture of an img2img job, fitted to the job's size as A1111's "Resize mode" does; an
edit's input pictures, read as they are.

Followed (facts, not code) from AUTOMATIC1111 modules/images.py `resize_image`: "Just resize"
stretches to the size; "Crop and resize" scales until the picture covers the size, keeping its
shape, and crops the middle; "Resize and fill" scales until it fits inside, centres it, and fills
the bands left over with its own edge rows or columns stretched outward.
"""

from __future__ import annotations

import io

from PIL import Image, ImageFilter

LANCZOS = Image.Resampling.LANCZOS


def read_references(pngs: tuple[bytes, ...]) -> tuple[Image.Image, ...]:
    """An edit's input pictures (plain RGB PNGs from the bot), as they are: each edit model reads
    them at its own sizes (gpu_worker/families/flux_kontext.py, qwen_image.py)."""
    return tuple(Image.open(io.BytesIO(png)).convert("RGB") for png in pngs)


def prepare_init(png: bytes, width: int, height: int, mode: str) -> Image.Image:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if mode == "resize":
        return image.resize((width, height), LANCZOS)
    if mode == "crop":
        ratio = max(width / image.width, height / image.height)
        scaled = image.resize(
            (max(width, round(image.width * ratio)), max(height, round(image.height * ratio))), LANCZOS
        )
        left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    if mode == "fill":
        ratio = min(width / image.width, height / image.height)
        w, h = max(1, round(image.width * ratio)), max(1, round(image.height * ratio))
        scaled = image.resize((w, h), LANCZOS)
        out = Image.new("RGB", (width, height))
        left, top = (width - w) // 2, (height - h) // 2
        out.paste(scaled, (left, top))
        right, bottom = width - left - w, height - top - h
        # Bands left and right: the first and last columns, stretched; above and below: the rows.
        bands = [
            ((0, 0, 1, h), (left, h), (0, top)),
            ((w - 1, 0, w, h), (right, h), (left + w, top)),
            ((0, 0, w, 1), (w, top), (left, 0)),
            ((0, h - 1, w, h), (w, bottom), (left, top + h)),
        ]
        for box, size, where in bands:
            if size[0] > 0 and size[1] > 0:
                out.paste(scaled.crop(box).resize(size), where)
        return out
    raise ValueError(f"unknown resize mode {mode!r}")


def prepare_mask(png: bytes, width: int, height: int, mode: str, blur: int) -> Image.Image:
    """The inpainting mask (white = redraw) fitted as its picture is, blurred by A1111's "Mask blur"."""
    mask = prepare_init(png, width, height, mode).convert("L")
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask
