"""A ControlNet unit's picture turned into its map, by the model-free preprocessors of the A1111
extension (Mikubill/sd-webui-controlnet, scripts/preprocessor/legacy/processor.py and
annotator/shuffle), with OpenCV as it uses it.

The picture is first fitted to the job's size (the extension's default resize mode, Crop and Resize)
and the preprocessor runs at that size (its Pixel Perfect): the map needs no second resize. Maps are
RGB, white lines on black where the extension's are.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from common.control import ControlUnit


def control_map(
    picture: Image.Image, unit: ControlUnit, seed: int, annotator: Callable[[np.ndarray], np.ndarray] | None = None
) -> Image.Image:
    """`picture` (at the job's size) as `unit`'s preprocessor sees it; `seed` draws the shuffle's flow
    (the extension draws it unseeded: a job here gives the same map again); `annotator`: the network
    an annotator preprocessor runs (gpu_worker/annotators.py), RGB in, its gray map out."""
    rgb = np.asarray(picture.convert("RGB"))
    if annotator is not None:
        made = annotator(rgb)
        return Image.fromarray(np.ascontiguousarray(made if made.ndim == 3 else _gray_to_rgb(made)), "RGB")
    a, b = unit.threshold_a, unit.threshold_b
    match unit.module:
        case "none" | "ip-adapter_clip_h" | "ip-adapter_clip_g":  # a map already; an IP-Adapter reads the picture
            out = rgb
        case "invert":
            out = 255 - rgb
        case "canny":
            out = _gray_to_rgb(cv2.Canny(rgb, int(a or 100), int(b or 200)))
        case "scribble_xdog":
            out = _xdog(rgb, 32.0 if a is None else a)
        case "lineart_standard":
            out = _gray_to_rgb(_lineart_standard(rgb))
        case "threshold":
            out = np.where((rgb.min(axis=2) > (127.0 if a is None else a))[..., None], 255, 0).astype(np.uint8).repeat(3, 2)
        case "tile_resample":
            out = _tile(rgb, 1.0 if a is None else a)
        case "blur_gaussian":
            out = cv2.GaussianBlur(rgb, (0, 0), max(float(9.0 if a is None else a), 0.01))
        case "shuffle":
            out = _shuffle(rgb, np.random.default_rng(seed))
        case _:
            raise ValueError(f"no preprocessor {unit.module}")  # the bot refuses it by name first
    return Image.fromarray(np.ascontiguousarray(out), "RGB")


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _xdog(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """Difference of two Gaussians, thresholded: scribble lines from a picture's edges."""
    small = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 0.5)
    large = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(large - small, axis=2)).clip(0, 255).astype(np.uint8)
    return _gray_to_rgb(np.where(2 * (255 - dog.astype(np.int32)) > threshold, 255, 0).astype(np.uint8))


def _lineart_standard(rgb: np.ndarray) -> np.ndarray:
    """Dark lines on a light ground as white lines, scaled by their median strength."""
    x = rgb.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def _tile(rgb: np.ndarray, rate: float) -> np.ndarray:
    """Down-sampled by `rate` (below 1.1: the picture as it is); the unit's input is resized to the
    job's size again, as the extension's is."""
    if rate < 1.1:
        return rgb
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, int(width / rate)), max(1, int(height / rate))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _noise_disk(height: int, width: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in 0..1: a coarse grid of uniform values, cubic-resized (annotator/shuffle's)."""
    noise = rng.uniform(0, 1, size=(height // scale + 2, width // scale + 2)).astype(np.float64)
    noise = cv2.resize(noise, (width + 2 * scale, height + 2 * scale), interpolation=cv2.INTER_CUBIC)
    noise = noise[scale : scale + height, scale : scale + width]
    noise -= noise.min()
    return noise / max(noise.max(), 1e-12)


def _shuffle(rgb: np.ndarray, rng: np.random.Generator, scale: int = 256) -> np.ndarray:
    """The picture's content moved along a random smooth flow (the shuffle ControlNet's input)."""
    height, width = rgb.shape[:2]
    x = _noise_disk(height, width, scale, rng) * float(width - 1)
    y = _noise_disk(height, width, scale, rng) * float(height - 1)
    return cv2.remap(rgb, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR)
