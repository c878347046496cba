"""`python bot.py prompt explain "…"`: how Easel (and A1111) reads a prompt — chunks, weights, tags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.generation.prompt_chunks import CHUNK, chunk_prompt
from bot.generation.prompt_syntax import parse_prompt

# Every architecture Easel runs uses CLIP's BPE vocabulary; SD1's bundled tokenizer stands for all.
TOKENIZER = Path(__file__).resolve().parents[2] / "gpu_worker" / "configs" / "sd1" / "tokenizer"


def explain(text: str) -> dict[str, Any]:
    from transformers import CLIPTokenizer  # the tokenizer only: no torch in this process
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # its notes about tokenizer options are not for our users
    parsed = parse_prompt(text)  # refuses prompt editing and alternation, by name
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    chunks = []
    for chunk in chunk_prompt(text, tokenizer):
        body = list(zip(chunk.tokens[1:-1], chunk.weights[1:-1], strict=True))
        used = [(token, weight) for token, weight in body if token != tokenizer.eos_token_id]
        runs: list[dict[str, Any]] = []
        for token, weight in used:
            if runs and runs[-1]["weight"] == weight:
                runs[-1]["tokens"].append(token)
            else:
                runs.append({"weight": weight, "tokens": [token]})
        chunks.append(
            {
                "tokens": len(used),
                "runs": [{"weight": round(r["weight"], 4), "text": tokenizer.decode(r["tokens"])} for r in runs],
            }
        )
    return {
        "chunks": chunks,
        "tokens": sum(c["tokens"] for c in chunks),
        "extra_networks": [tag.text for tag in parsed.extra_networks],
    }


async def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    reading = explain(args.text)
    if args.json:
        print(json.dumps(reading, indent=2))
        return 0
    print(f"{len(reading['chunks'])} chunk(s) of {CHUNK} tokens; {reading['tokens']} tokens used")
    if reading["extra_networks"]:
        print(f"taken out (not applied yet): {', '.join(reading['extra_networks'])}")
    for number, chunk in enumerate(reading["chunks"], 1):
        print(f"chunk {number}: {chunk['tokens']} tokens")
        for run in chunk["runs"]:
            print(f"  {run['weight']:>7.4f}  {run['text']}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    prompt = sub.add_parser("prompt", help="how a prompt is read: chunks of 75 tokens, weights, extra-network tags")
    psub = prompt.add_subparsers(dest="prompt_command", required=True)
    p = psub.add_parser("explain", help="show the chunks and weights of a prompt, as A1111 reads it")
    p.add_argument("text")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_explain)
