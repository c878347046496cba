"""`python bot.py prompt explain "…"`: how Easel (and A1111) reads a prompt — its schedule (prompt
editing, alternation), chunks, weights and extra-network tags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.errors import EaselError
from bot.generation.prompt_chunks import CHUNK, Chunk, chunk_prompt
from bot.generation.prompt_schedule import prompt_schedule
from bot.generation.prompt_syntax import parse_prompt

# Every architecture Easel runs uses CLIP's BPE vocabulary; SD1's bundled tokenizer stands for all.
TOKENIZER = Path(__file__).resolve().parents[2] / "gpu_worker" / "configs" / "sd1" / "tokenizer"


def explain(text: str, steps: int) -> dict[str, Any]:
    from transformers import CLIPTokenizer  # the tokenizer only: no torch in this process
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # its notes about tokenizer options are not for our users
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    schedule, tags = [], []
    for until_step, scheduled in prompt_schedule(text, steps):  # prompt editing and alternation
        tags += [tag.text for tag in parse_prompt(scheduled).extra_networks]
        chunks = [_chunk_runs(chunk, tokenizer) for chunk in chunk_prompt(scheduled, tokenizer)]
        schedule.append(
            {"until_step": until_step, "text": scheduled, "chunks": chunks, "tokens": sum(c["tokens"] for c in chunks)}
        )
    return {"steps": steps, "schedule": schedule, "extra_networks": list(dict.fromkeys(tags))}


def _chunk_runs(chunk: Chunk, tokenizer: Any) -> dict[str, Any]:
    body = list(zip(chunk.tokens[1:-1], chunk.weights[1:-1], strict=True))
    used = [(token, weight) for token, weight in body if token != tokenizer.eos_token_id]
    runs: list[dict[str, Any]] = []
    for token, weight in used:
        if runs and runs[-1]["weight"] == weight:
            runs[-1]["tokens"].append(token)
        else:
            runs.append({"weight": weight, "tokens": [token]})
    return {
        "tokens": len(used),
        "runs": [{"weight": round(r["weight"], 4), "text": tokenizer.decode(r["tokens"])} for r in runs],
    }


async def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.steps <= 150:
        raise EaselError("--steps must be between 1 and 150")
    reading = explain(args.text, args.steps)
    if args.json:
        print(json.dumps(reading, indent=2))
        return 0
    if reading["extra_networks"]:
        print(f"taken out (not applied yet): {', '.join(reading['extra_networks'])}")
    first = 1
    for entry in reading["schedule"]:
        if len(reading["schedule"]) > 1:
            print(f"steps {first}-{entry['until_step']} of {reading['steps']}: {entry['text']}")
        first = entry["until_step"] + 1
        print(f"{len(entry['chunks'])} chunk(s) of {CHUNK} tokens; {entry['tokens']} tokens used")
        for number, chunk in enumerate(entry["chunks"], 1):
            print(f"chunk {number}: {chunk['tokens']} tokens")
            for run in chunk["runs"]:
                print(f"  {run['weight']:>7.4f}  {run['text']}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    prompt = sub.add_parser("prompt", help="how a prompt is read: chunks of 75 tokens, weights, extra-network tags")
    psub = prompt.add_subparsers(dest="prompt_command", required=True)
    p = psub.add_parser("explain", help="show the chunks and weights of a prompt, as A1111 reads it")
    p.add_argument("text")
    p.add_argument("--steps", type=int, default=20, help="sampling steps, for prompt editing and alternation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_explain)
