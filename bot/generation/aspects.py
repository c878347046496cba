"""Picture shapes: aspect presets mapped onto a checkpoint's native area."""

from __future__ import annotations

import math

ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "3:2": (3, 2),
    "2:3": (2, 3),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "16:9": (16, 9),
    "9:16": (9, 16),
}


def size_for(aspect: str, native: int) -> tuple[int, int]:
    """The checkpoint's native area in the asked shape, on a 64-px grid (8 px for tiny models)."""
    rw, rh = ASPECTS[aspect]
    grid = 64 if native >= 512 else 8
    width = math.sqrt(native * native * rw / rh)
    height = width * rh / rw
    return max(grid, round(width / grid) * grid), max(grid, round(height / grid) * grid)


def rescale(width: int, height: int, native: int, at_least: int = 0) -> tuple[int, int]:
    """The same shape with the area of `native`², on the grid size_for uses; neither side under `at_least`
    (then a little larger than native, the shape kept)."""
    grid = 64 if native >= 512 else 8
    factor = (native * native / (width * height)) ** 0.5
    factor = max(factor, at_least / min(width, height))
    return max(grid, round(width * factor / grid) * grid), max(grid, round(height * factor / grid) * grid)
