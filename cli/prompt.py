"""`python bot.py prompt explain "…"`: how Easel (and A1111) reads a prompt (bot/generation/prompt_explain.py);
`python bot.py pnginfo PICTURE`: the generation parameters a picture carries (bot/images/infotext.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from bot.config import Settings
from bot.db import open_database
from bot.generation.prompt_explain import expand_template, explain, render
from bot.images.infotext import read_picture_parameters, render_reading
from bot.networks.registry import network_registries
from bot.rules.limits import random_seed
from common.errors import EaselError


async def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    db = await open_database(settings.database_path)
    try:
        _, embeddings = network_registries(db, settings)
        words = {e.name: e.rank or 1 for e in await embeddings.list(status="present")}
    finally:
        await db.close()
    found = await asyncio.to_thread(settings.wildcards().current)
    seed = args.seed if args.seed >= 0 else random_seed()
    text, template = await asyncio.to_thread(expand_template, args.text, seed, found)
    reading = await asyncio.to_thread(explain, text, args.steps, words, args.regions) | template
    print(json.dumps(reading, indent=2) if args.json else "\n".join(render(reading)))
    return 0


async def cmd_pnginfo(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.path).expanduser()  # noqa: ASYNC240 (no I/O beyond reading $HOME)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as e:
        raise EaselError(f"{args.path}: {e.strerror or e}") from None
    info = await asyncio.to_thread(read_picture_parameters, data)
    print(json.dumps(info.to_dict(), indent=2, ensure_ascii=False) if args.json else render_reading(info))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pnginfo", help="the A1111 generation parameters in a PNG, JPEG or WebP")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_pnginfo)

    prompt = sub.add_parser("prompt", help="how a prompt is read: chunks of 75 tokens, weights, extra-network tags")
    psub = prompt.add_subparsers(dest="prompt_command", required=True)
    p = psub.add_parser("explain", help="show the chunks and weights of a prompt, as A1111 reads it")
    p.add_argument("text")
    p.add_argument("--steps", type=int, default=20, help="sampling steps, for prompt editing and alternation")
    p.add_argument("--seed", type=int, default=-1, help="with wildcards or {a|b}: the seed the prompt is drawn from (-1: random)")
    p.add_argument("--regions", default="", help='the Regional Prompter\'s divide ratio and options, e.g. "1,1 rows"')
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_explain)
