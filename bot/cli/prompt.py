"""`python bot.py prompt explain "…"`: how Easel (and A1111) reads a prompt (bot/generation/prompt_explain.py)."""

from __future__ import annotations

import argparse
import json

from bot.config import Settings
from bot.generation.prompt_explain import explain, render


async def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    reading = explain(args.text, args.steps)
    print(json.dumps(reading, indent=2) if args.json else "\n".join(render(reading)))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    prompt = sub.add_parser("prompt", help="how a prompt is read: chunks of 75 tokens, weights, extra-network tags")
    psub = prompt.add_subparsers(dest="prompt_command", required=True)
    p = psub.add_parser("explain", help="show the chunks and weights of a prompt, as A1111 reads it")
    p.add_argument("text")
    p.add_argument("--steps", type=int, default=20, help="sampling steps, for prompt editing and alternation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_explain)
