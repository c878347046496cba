"""Upscaler models at work: a file loaded into its network, a picture enlarged tile by tile.

Followed (facts, not code) from AUTOMATIC1111: modules/upscaler.py `Upscaler.upscale` (the model runs
again while the picture is smaller than asked, at most three times, then Lanczos meets the exact
size), modules/upscaler_utils.py (the picture goes in as BGR, as the ESRGAN models were trained on
OpenCV's channel order; tiles of `ESRGAN_tile` = 192 pixels with `ESRGAN_tile_overlap` = 8) and
Real-ESRGAN's RealESRGANer (each tile is run with that much of its neighbours around it, and only
its own part of the output is kept, so no seams are averaged). Memory grows with the tile, not the
picture: the whole output is held once, as 8-bit pixels.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from torch.nn import functional as F

from common.upscaler_detection import UpscalerFileError, UpscalerKind, canonical_names, detect_upscaler, state_dict_of
from gpu_worker.upscaler_nets import build_network

TILE = 192
TILE_OVERLAP = 8
MAX_PASSES = 3
RESIDENT = 2  # upscalers kept loaded in a worker (they are small: 17-67 MB)

Cancelled = Callable[[], bool]
Progress = Callable[[int, int], None]  # tiles done, tiles in all


class UpscaleCancelled(Exception):
    pass


@dataclass
class Upscaler:
    kind: UpscalerKind
    network: torch.nn.Module
    device: torch.device
    dtype: torch.dtype

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """One pass on a (1, C, H, W) tensor in 0..1; a pixel-unshuffling network gets its input
        padded to a multiple of its factor, and the padding is cut from the output."""
        height, width = x.shape[-2:]
        factor = self.kind.shuffle
        pad_h, pad_w = -height % factor, -width % factor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        with torch.inference_mode():
            out = self.network(x.to(self.device, self.dtype))
        return out[..., : height * self.kind.scale, : width * self.kind.scale]


def load_upscaler(path: Path, device: torch.device) -> Upscaler:
    """The file's network with its weights; UpscalerFileError when the file is not one we run. The
    bot has vetted a pickle with its allow-list reader; torch reads it again with weights_only."""
    if path.suffix.lower() == ".safetensors":
        root: dict[str, object] = dict(safetensors.torch.load_file(str(path)))
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, dict):
            raise UpscalerFileError(f"{path.name}: holds a {type(loaded).__name__}, not a dict of tensors")
        root = loaded
    state = {k: v for k, v in state_dict_of(root).items() if isinstance(v, torch.Tensor)}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    kind = detect_upscaler(shapes)
    names = canonical_names(shapes)
    network = build_network(kind)
    try:
        network.load_state_dict({names[k]: v for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise UpscalerFileError(
            f"{path.name}: its tensors do not fit a {kind.label}: {str(e).splitlines()[-1].strip()}"
        ) from None
    # Half precision on a GPU, as A1111 runs them; a CPU computes in float32.
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    network.to(device, dtype).eval().requires_grad_(False)
    return Upscaler(kind, network, device, dtype)


class UpscalerCache:
    """The last few upscalers a worker used, by their file's sha256."""

    def __init__(self, device: torch.device, size: int = RESIDENT) -> None:
        self.device = device
        self.size = size
        self._models: OrderedDict[str, Upscaler] = OrderedDict()

    def get(self, path: str, sha256: str) -> Upscaler:
        found = self._models.pop(sha256, None) or load_upscaler(Path(path), self.device)
        self._models[sha256] = found
        while len(self._models) > self.size:
            self._models.popitem(last=False)
        return found


def enlarge(
    upscaler: Upscaler,
    picture: Image.Image,
    tile: int = TILE,
    overlap: int = TILE_OVERLAP,
    cancelled: Cancelled | None = None,
    on_tile: Callable[[], None] | None = None,
) -> Image.Image:
    """One pass of the network over the picture, in tiles of `tile` pixels (0: whole)."""
    gray = upscaler.kind.in_channels // (upscaler.kind.shuffle**2) == 1
    pixels = np.asarray(picture.convert("L" if gray else "RGB"))
    if not gray:
        pixels = pixels[:, :, ::-1]  # BGR
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255)
    x = x[None, None] if gray else x.permute(2, 0, 1)[None]
    height, width = x.shape[-2:]
    scale = upscaler.kind.scale
    out = np.empty((height * scale, width * scale, 1 if gray else 3), dtype=np.uint8)
    step = tile if tile > 0 else max(height, width)
    for top in range(0, height, step):
        for left in range(0, width, step):
            if cancelled is not None and cancelled():
                raise UpscaleCancelled
            bottom, right = min(top + step, height), min(left + step, width)
            t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
            part = upscaler.run(x[..., t0 : min(bottom + overlap, height), l0 : min(right + overlap, width)])
            part = part[..., (top - t0) * scale : (bottom - t0) * scale, (left - l0) * scale : (right - l0) * scale]
            out[top * scale : bottom * scale, left * scale : right * scale] = _to_pixels(part)
            if on_tile is not None:
                on_tile()
    if gray:
        return Image.fromarray(out[:, :, 0], "L").convert("RGB")
    return Image.fromarray(np.ascontiguousarray(out[:, :, ::-1]), "RGB")


def upscale_picture(
    upscaler: Upscaler,
    picture: Image.Image,
    size: tuple[int, int],
    tile: int = TILE,
    overlap: int = TILE_OVERLAP,
    cancelled: Cancelled | None = None,
    progress: Progress | None = None,
) -> Image.Image:
    """The picture at `size` (width, height): the model's passes until it is at least that big,
    then Lanczos to the exact size."""
    passes = planned_passes(picture.size, size, upscaler.kind.scale)
    total = sum(_tiles(w, h, tile) for w, h in passes)
    done = 0

    def on_tile() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    for _ in passes:
        picture = enlarge(upscaler, picture, tile, overlap, cancelled, on_tile)
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return picture


def planned_passes(start: tuple[int, int], size: tuple[int, int], scale: int) -> list[tuple[int, int]]:
    """The input size of each pass: while the picture is smaller than asked, at most three; a 1x
    model (a restorer) runs once when the size grows at all."""
    passes: list[tuple[int, int]] = []
    width, height = start
    while len(passes) < MAX_PASSES and (width < size[0] or height < size[1]):
        passes.append((width, height))
        if scale == 1:
            break
        width, height = width * scale, height * scale
    return passes


def _tiles(width: int, height: int, tile: int) -> int:
    step = tile if tile > 0 else max(width, height)
    return math.ceil(width / step) * math.ceil(height / step)


def _to_pixels(part: torch.Tensor) -> np.ndarray:
    return part[0].float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
