"""`python bot.py safety check PICTURE`: the picture check's scores, as the bot would see them.
`python bot.py safety prompt TEXT | --file F [--guild ID [--channel ID]] [--json]`: the prompt rules —
the minors rule, and the bot's (or that server's) blocked words — as /imagine applies them. Exit 1
when any prompt was refused: for owners checking their own word lists."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from bot.config import Settings
from bot.images.uploads import read_upload
from bot.rules.minors import find_minors
from bot.rules.policy import blocked_word, picture_verdict
from bot.worker_tools import run_worker_tool
from cli.generate import _read_input
from cli.server import open_store
from common.errors import EaselError

MAX_PROMPTS = 100_000  # lines of a --file


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


def _prompts(args: argparse.Namespace) -> list[str]:
    if args.file is None:
        if args.text is None:
            raise EaselError("give a prompt, or --file F with one prompt a line")
        return [args.text]
    if args.text is not None:
        raise EaselError("give a prompt or --file, not both")
    try:
        with open(args.file, encoding="utf-8", errors="strict") as f:
            lines = [line.rstrip("\n") for _, line in zip(range(MAX_PROMPTS + 1), f, strict=False)]
    except (OSError, UnicodeDecodeError) as e:
        raise EaselError(f"cannot read {args.file}: {e}") from None
    if len(lines) > MAX_PROMPTS:
        raise EaselError(f"{args.file} has more than {MAX_PROMPTS:,} lines; split it")
    return [line for line in lines if line.strip()]


async def cmd_prompt(args: argparse.Namespace, settings: Settings) -> int:
    prompts = _prompts(args)
    blocked = settings.blocked_words
    if args.guild is not None:
        async with open_store(settings) as store:
            blocked = (await store.effective(args.guild, args.channel)).blocked_words
    refused_any = False
    for prompt in prompts:
        found = await asyncio.to_thread(find_minors, [prompt], settings.minor_terms, settings.sexual_terms)
        word = blocked_word(prompt, blocked)
        reason = (
            f"the minors rule ({found})" if found else f"blocked word {word!r}" if word is not None else None
        )
        refused_any |= reason is not None
        if args.json or args.file is not None:
            print(json.dumps({"prompt": prompt, "refused": reason is not None, "reason": reason}, ensure_ascii=False))
        else:
            print(f"refused: {reason}" if reason else "allowed")
    return 1 if refused_any else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("safety", help="the picture check").add_subparsers(dest="action", required=True)
    p = group.add_parser("check", help="score a picture as the bot scores every picture it makes")
    p.add_argument("picture", help="a PNG, JPEG or WebP")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_check)
    p = group.add_parser("prompt", help="whether the prompt rules refuse a prompt (exit 1 if any was refused)")
    p.add_argument("text", nargs="?", help="the prompt")
    p.add_argument("--file", help="one prompt a line; one JSON line each")
    p.add_argument("--guild", help="apply this server's blocked words (from /settings) instead of the bot's")
    p.add_argument("--channel", help="with --guild: that channel's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_prompt)
