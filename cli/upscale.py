"""`python bot.py upscale PICTURE --upscaler NAME --scale N`: A1111's Extras upscale, through the
same rules and service as /upscale."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tqdm import tqdm

from bot.config import Settings
from bot.db import open_database
from bot.generation.service import GenerationService
from bot.jobs import Jobs
from bot.rules.limits import Limits
from bot.upscalers.registry import upscaler_registry
from bot.upscalers.service import UpscaleService
from cli.checkpoints import open_registry
from cli.generate import _read_input
from common.errors import EaselError


async def cmd_upscale(args: argparse.Namespace, settings: Settings) -> int:
    picture = _read_input(args.picture)
    out = Path(args.out) if args.out else Path(args.picture).with_name(f"{Path(args.picture).stem}-{args.scale:g}x.png")
    if await asyncio.to_thread(out.exists) and not args.force:
        raise EaselError(f"{out} exists; choose another --out, or --force")
    db = await open_database(settings.database_path)
    try:
        async with open_registry(settings, need_models_dir=False) as registry:
            # No worker is started for an upscale: a model runs in its own one-shot process.
            jobs = Jobs(
                registry,
                GenerationService(db, [], Limits()),
                None,
                upscaling=UpscaleService(upscaler_registry(db, settings)),
            )
            bar = tqdm(unit="tile", desc="upscale", disable=None)

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            try:
                result = await jobs.upscale(picture, args.upscaler, args.scale, progress)
            finally:
                bar.close()
    finally:
        await db.close()
    await asyncio.to_thread(out.write_bytes, result.png)
    print(
        f"wrote {out}: {result.width}x{result.height}, {result.postprocessing}, {result.seconds:.1f} s, "
        "picture check " + ("no readable score" if result.nsfw_score is None else f"{result.nsfw_score:.2f}")
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="enlarge a picture with an upscaler model, Lanczos or Nearest (A1111's Extras)")
    p.add_argument("picture", help="a PNG, JPEG or WebP")
    p.add_argument("--upscaler", default="Lanczos", help="an installed upscaler (`upscalers list`), Lanczos or Nearest")
    p.add_argument("--scale", type=float, default=2.0, help="each side times this, above 1 up to 8")
    p.add_argument("--out", help="where the PNG goes (default: PICTURE-<scale>x.png beside it)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=cmd_upscale)
