"""FLUX.1 Kontext [dev]: a picture edited as its instruction says, on the Flux family's loaded modules.

Each input picture is encoded by the VAE and its tokens ride beside the picture being drawn at every
step, unchanged (diffusers' FluxKontextPipeline, for one picture). Several are placed as ComfyUI
places reference latents by default ("offset", comfy/ldm/flux/model.py `_forward`): all at position
index 1, each beside the ones before it — to the right when the pictures so far are taller than wide,
else below — so that no two share a position. With one picture this is diffusers' placement exactly.

Each picture is first scaled to the Kontext training size nearest its shape (BFL's list, as
FluxKontextPipeline `_auto_resize` and ComfyUI's FluxKontextImageScale pick it), taken to the job's
own area: the list itself for a job at the model's native megapixel.
"""

from __future__ import annotations

import math

import torch
from diffusers import FluxKontextPipeline
from PIL import Image

from gpu_worker.latents import encode

# BFL's flux/util.py PREFERED_KONTEXT_RESOLUTIONS (width, height), as diffusers and ComfyUI copy it.
KONTEXT_SIZES = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)  # fmt: skip
GRID = 16  # 8x the VAE, then 2x2 patches


def reference_size(width: int, height: int, area: int) -> tuple[int, int]:
    """The size an input picture of `width` x `height` is read at: the Kontext training size nearest
    its aspect ratio, scaled to `area` pixels, on the 16-pixel grid."""
    aspect = width / height
    _, w, h = min((abs(aspect - w / h), w, h) for w, h in KONTEXT_SIZES)
    scale = math.sqrt(area / (w * h))
    return max(GRID, round(w * scale / GRID) * GRID), max(GRID, round(h * scale / GRID) * GRID)


def placements(shapes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Where each reference's tokens start (row, column), from their (rows, columns): ComfyUI's
    "offset" method, in token units."""
    rows = columns = 0
    out = []
    for height, width in shapes:
        row = column = 0
        if height + rows > width + columns:
            column = columns
        else:
            row = rows
        rows, columns = max(rows, height + row), max(columns, width + column)
        out.append((row, column))
    return out


def encode_references(pipe: FluxKontextPipeline, pictures: tuple[Image.Image, ...], size: tuple[int, int]) -> list[torch.Tensor]:
    """Each picture at its reading size for a job of `size`, as the VAE's latents (1, C, H, W)."""
    area = size[0] * size[1]
    latents = []
    for picture in pictures:
        width, height = reference_size(picture.width, picture.height, area)
        resized = picture.resize((width, height), Image.Resampling.LANCZOS)
        latents.append(encode(pipe.vae, pipe.image_processor.preprocess(resized)))
    return latents


class KontextPipeline(FluxKontextPipeline):
    """FluxKontextPipeline reading any number of encoded pictures, set on `references` before a call
    (which passes no `image` of its own)."""

    references: list[torch.Tensor]

    def prepare_latents(  # type: ignore[override]
        self,
        image: torch.Tensor | None,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        latents, _, latent_ids, _ = super().prepare_latents(
            None, batch_size, num_channels_latents, height, width, dtype, device, generator, latents
        )
        references = getattr(self, "references", [])
        if not references:
            return latents, None, latent_ids, None
        shapes = [(int(ref.shape[-2]) // 2, int(ref.shape[-1]) // 2) for ref in references]
        tokens, ids = [], []
        for ref, (rows, columns), (row, column) in zip(references, shapes, placements(shapes), strict=True):
            channels = ref.shape[1]
            # in the picture's own dtype, which the transformer runs in (the prompt's may be float32: T5 in fp16 overflows)
            batch = ref.to(device=device, dtype=latents.dtype).repeat(batch_size, 1, 1, 1)
            tokens.append(self._pack_latents(batch, batch_size, channels, rows * 2, columns * 2))
            place = self._prepare_latent_image_ids(batch_size, rows, columns, device, dtype)
            place[..., 0] = 1
            place[..., 1] += row
            place[..., 2] += column
            ids.append(place)
        return latents, torch.cat(tokens, dim=1), latent_ids, torch.cat(ids, dim=0)
