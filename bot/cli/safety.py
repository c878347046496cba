"""`python bot.py safety check PICTURE`: the picture check's scores, as the bot would see them."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from bot.cli.generate import _read_input
from bot.cli.worker_tools import run_worker_tool
from bot.config import Settings
from bot.generation.policy import picture_verdict
from bot.images.uploads import read_upload


async def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    upload = await asyncio.to_thread(read_upload, _read_input(args.picture))  # read as any upload is
    with tempfile.TemporaryDirectory(prefix="easel-check-") as folder:
        png = Path(folder) / "picture.png"
        await asyncio.to_thread(png.write_bytes, upload.png)
        scores = json.loads(await run_worker_tool("safety-check", str(png)))
    if args.json:
        print(json.dumps(scores))
        return 0
    found = ", ".join(f"{label} {score:.2f}" for label, score in scores["labels"].items()) or "nothing"
    threshold = settings.nsfw_threshold
    ordinary = picture_verdict(scores["score"], threshold, settings.nsfw_pictures, settings.nsfw_pictures_adult, False)
    adult = picture_verdict(scores["score"], threshold, settings.nsfw_pictures, settings.nsfw_pictures_adult, True)
    print(f"score {scores['score']:.2f} (threshold {threshold:g}); found: {found}")
    print(f"by the bot's defaults: {ordinary} in ordinary channels, {adult} in age-restricted channels and DMs")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("safety", help="the picture check").add_subparsers(dest="action", required=True)
    p = group.add_parser("check", help="score a picture as the bot scores every picture it makes")
    p.add_argument("picture", help="a PNG, JPEG or WebP")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_check)
