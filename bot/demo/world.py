"""The demo model's world: the pictures tools/train_demo_model.py trains it on, their captions, and
the pixel-counting score by which its pictures are judged (the trainer's `--evaluate` and the tests
use the same one).

A picture is one shape (circle, square, triangle, diamond) in a named colour on a background of
another, at one of five places, small or large, 64x64: "a small red circle on a blue background,
top left". A fifth of the 56 colour pairs is held out of training, so a score on them measures
whether the model composes what it learnt rather than recalls it.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "diamond")
PLACES = {
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "in the middle": (0.5, 0.5),
}
SIZES = {"small": 0.2, "large": 0.34}


def colour_pairs(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(training pairs, held-out pairs) of (shape colour, background colour): a fifth held out."""
    pairs = [(a, b) for a in COLOURS for b in COLOURS if a != b]
    random.Random(seed).shuffle(pairs)
    held = len(pairs) // 5
    return pairs[held:], pairs[:held]


def shape_on(pen: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        pen.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
    elif shape == "triangle":
        pen.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def draw(shape: str, colour: str, background: str, place: str, size: str) -> Image.Image:
    picture = Image.new("RGB", (SIZE, SIZE), COLOURS[background])
    cx, cy = (v * SIZE for v in PLACES[place])
    shape_on(ImageDraw.Draw(picture), shape, cx, cy, SIZES[size] * SIZE / 2 * 1.25, COLOURS[colour])
    return picture


def scene(rng: random.Random, pairs: list[tuple[str, str]]) -> Image.Image:
    """A picture for the VAE: one to four shapes anywhere, of any size, on a background, never
    touching, each shape's colour on that background a training pair. Many colours in many places
    make the VAE code colour locally: trained on single-shape pictures, it learnt a code per colour
    pair and drew held-out pairs in the wrong colours (a black diamond on white came back green)."""
    background = rng.choice(sorted({b for _, b in pairs}))
    allowed = [a for a, b in pairs if b == background]
    picture = Image.new("RGB", (SIZE, SIZE), COLOURS[background])
    pen = ImageDraw.Draw(picture)
    placed: list[tuple[float, float, float]] = []
    for _ in range(rng.randint(1, 4)):
        cx, cy, r = rng.uniform(6, SIZE - 6), rng.uniform(6, SIZE - 6), rng.uniform(4, 16)
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 2) ** 2 for x, y, q in placed):
            placed.append((cx, cy, r))
            shape_on(pen, rng.choice(SHAPES), cx, cy, r, COLOURS[rng.choice(allowed)])
    return picture


def nested_scene(rng: random.Random, pairs: list[tuple[str, str]]) -> Image.Image:
    """A picture for polishing the VAE's decoder: a large shape whose colour on the background is a
    training pair, with one or two small shapes of any colour on it. Every colour then meets every
    other at some edge, never as a held-out shape on its background: trained without such edges, the
    decoder drew a black shape on blue as a green one."""
    background = rng.choice(sorted({b for _, b in pairs}))
    picture = Image.new("RGB", (SIZE, SIZE), COLOURS[background])
    pen = ImageDraw.Draw(picture)
    cx, cy, r = rng.uniform(16, SIZE - 16), rng.uniform(16, SIZE - 16), rng.uniform(12, 20)
    shape_on(pen, rng.choice(SHAPES), cx, cy, r, COLOURS[rng.choice([a for a, b in pairs if b == background])])
    for _ in range(rng.randint(1, 2)):
        q = rng.uniform(3, r * 0.5)
        dx, dy = (rng.uniform(-r + q, r - q) * 0.5 for _ in range(2))
        shape_on(pen, rng.choice(SHAPES), cx + dx, cy + dy, q, COLOURS[rng.choice(list(COLOURS))])
    return picture


def caption(shape: str, colour: str, background: str, place: str, size: str, form: int = 3) -> str:
    """The picture's caption; `form` says what it names beyond the colours and the shape: bit 1 the
    size, bit 2 the place (people write "a red circle on a blue background" as often as the rest)."""
    text = f"a {size + ' ' if form & 1 else ''}{colour} {shape} on a {background} background"
    return f"{text}, {place}" if form & 2 else text


Spec = tuple[str, str, str, str, str]


def sample(rng: random.Random, pairs: list[tuple[str, str]]) -> Spec:
    colour, background = rng.choice(pairs)
    return rng.choice(SHAPES), colour, background, rng.choice(list(PLACES)), rng.choice(list(SIZES))


# A pixel farther than this (RGB distance) from every named colour is a blend, an edge between two
# colours or the model's uncertainty, and is not counted: on a small shape the blended ring around
# it outnumbers its fill, and a blend of black and white is nearest to purple.
CLEAR_COLOUR = 70.0
_PALETTE = np.asarray(list(COLOURS.values()), dtype=float)
_NAMES = list(COLOURS)


def colour_names(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest named colour, its distance) for each pixel of an (..., 3) array."""
    distances = np.linalg.norm(pixels[..., None, :].astype(float) - _PALETTE, axis=-1)
    return distances.argmin(-1), distances.min(-1)


def dominant_colours(picture: Image.Image) -> tuple[str, str]:
    """(shape colour, background colour) by pixel counting: the background is the colour most of the
    border pixels are nearest to; the shape, the commonest other clear colour inside."""
    pixels = np.asarray(picture.convert("RGB"))
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = int(np.bincount(colour_names(border)[0], minlength=len(_NAMES)).argmax())
    names, distances = colour_names(pixels[2:-2, 2:-2].reshape(-1, 3))
    counts = np.bincount(names[distances <= CLEAR_COLOUR], minlength=len(_NAMES))
    counts[background] = 0
    shape = int(counts.argmax()) if counts.any() else background
    return _NAMES[shape], _NAMES[background]
