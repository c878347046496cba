"""`python bot.py noise --seed S --shape CxHxW [--rng GPU|CPU|NV] [--count N] [--subseed S2
--subseed-strength X] [--seed-resize-from WxH] [--json]`: the noise a request starts from, one array
per picture, drawn by the worker's own code (gpu_worker/noise.py) — so anyone can hold Easel's noise
against A1111's (`{"noise": [[…]]}` with --json)."""

from __future__ import annotations

import argparse
import json
import re

from bot.config import Settings
from bot.worker_tools import run_worker_tool
from common.errors import EaselError
from common.parameters import RNG_SOURCES

MAX_NUMBERS = 4 * 16 * 256 * 256  # four pictures of a 2048 px model's latents: the output stays printable


def _shape(text: str) -> tuple[int, int, int]:
    found = re.fullmatch(r"(\d{1,3})x(\d{1,4})x(\d{1,4})", text.strip().lower())
    if found is None or min(int(n) for n in found.groups()) < 1:
        raise EaselError(f"--shape {text[:30]!r} is not CHANNELSxHEIGHTxWIDTH (the latent's, e.g. 4x64x64)")
    return int(found[1]), int(found[2]), int(found[3])


async def cmd_noise(args: argparse.Namespace, settings: Settings) -> int:
    channels, height, width = _shape(args.shape)
    if not 1 <= args.count <= 8:
        raise EaselError("--count must be between 1 and 8")
    if channels * height * width * args.count > MAX_NUMBERS:
        raise EaselError(f"{args.count} x {args.shape} is more noise than this command prints (at most {MAX_NUMBERS:,} numbers)")
    if not 0 <= args.seed < 2**32 or not -1 <= args.subseed < 2**32:
        raise EaselError("seeds are between 0 and 4294967295")
    if not 0 <= args.subseed_strength <= 1:
        raise EaselError("--subseed-strength must be between 0 and 1")
    if args.subseed_strength and args.subseed == -1:
        raise EaselError("--subseed-strength needs --subseed (the variation seed)")
    argv = ["noise", "--seed", str(args.seed), "--shape", f"{channels}x{height}x{width}", "--count", str(args.count)]
    argv += ["--rng", args.rng or settings.rng, "--subseed", str(args.subseed), "--subseed-strength", str(args.subseed_strength)]
    if args.seed_resize_from:
        if re.fullmatch(r"\d{2,5}x\d{2,5}", args.seed_resize_from) is None:
            raise EaselError(f"--seed-resize-from {args.seed_resize_from[:30]!r} is not WIDTHxHEIGHT in pixels")
        argv += ["--seed-resize-from", args.seed_resize_from]
    result = json.loads(await run_worker_tool(*argv))
    if args.json:
        print(json.dumps(result))
        return 0
    for number, picture in enumerate(result["noise"]):
        flat = [v for channel in picture for row in channel for v in row]
        mean = sum(flat) / len(flat)
        std = (sum((v - mean) ** 2 for v in flat) / len(flat)) ** 0.5
        first = ", ".join(f"{v:.8f}" for v in flat[:4])
        print(f"picture {number} (seed {args.seed + number}): {first}, … mean {mean:+.4f}, std {std:.4f}")
    print(f"source {result['rng']} on {result['device']}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("noise", help="the starting noise a request draws, as A1111 draws it (one array a picture)")
    p.add_argument("--seed", type=int, required=True, help="the first picture's seed (the others count up)")
    p.add_argument("--shape", required=True, help="the latent's CHANNELSxHEIGHTxWIDTH, e.g. 4x64x64 for SD at 512 px")
    p.add_argument("--rng", type=str.upper, choices=RNG_SOURCES, help="the source (default: EASEL_RNG or GPU)")
    p.add_argument("--count", type=int, default=1, help="pictures (seeds counting up)")
    p.add_argument("--subseed", type=int, default=-1, help="A1111's variation seed")
    p.add_argument("--subseed-strength", type=float, default=0.0, help="how much of the variation seed's noise, 0-1")
    p.add_argument("--seed-resize-from", help="WIDTHxHEIGHT in pixels: the seed's noise drawn at that size")
    p.add_argument("--json", action="store_true", help='{"noise": [[…]], …}: one C x H x W array a picture')
    p.set_defaults(handler=cmd_noise)
