"""`python bot.py wildcards list [NAME] [--json]`: the wildcard files `__name__` can name in a prompt
(bot/wildcards.py), or one file's lines; files refused, and why."""

from __future__ import annotations

import argparse
import asyncio
import json

from bot.config import Settings
from common.errors import EaselError

SHOWN_LINES = 50


async def cmd_wildcards(args: argparse.Namespace, settings: Settings) -> int:
    library = settings.wildcards()
    found = await asyncio.to_thread(library.current)
    if args.name:
        if args.name in found.refused:
            raise EaselError(f"wildcard __{args.name}__ is not offered: {found.refused[args.name]}")
        if args.name not in found.values:
            raise EaselError(f"no wildcard named __{args.name}__; `wildcards list` shows them")
        lines = found.values[args.name]
        if args.json:
            print(json.dumps({"name": args.name, "lines": lines}))
            return 0
        print("\n".join(lines[:SHOWN_LINES]) + (f"\n… and {len(lines) - SHOWN_LINES} more" if len(lines) > SHOWN_LINES else ""))
        return 0
    if args.json:
        print(json.dumps({"wildcards": {n: len(v) for n, v in sorted(found.values.items())}, "refused": found.refused}))
        return 0
    for name, lines in sorted(found.values.items()):
        print(f"__{name}__  ({len(lines)} lines)")
    for name, why in sorted(found.refused.items()):
        print(f"__{name}__  refused: {why}")
    if not found.values and not found.refused:
        print(f"no wildcard files; put .txt files (one choice a line) in {', '.join(str(f) for f in library.folders)}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    wildcards = sub.add_parser("wildcards", help="wildcard files for __name__ in prompts (A1111's Dynamic Prompts)")
    wsub = wildcards.add_subparsers(dest="wildcards_command", required=True)
    p = wsub.add_parser("list", help="the wildcards, or one's lines")
    p.add_argument("name", nargs="?", help="a wildcard's name, e.g. animals or colors/warm")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_wildcards)
