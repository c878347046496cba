"""`python bot.py merge …`: the A1111 Checkpoint Merger, from the command line; `bake-lora …`: LoRAs
written into a copy of a checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from tqdm import tqdm

from bot.checkpoints.merge_plan import METHODS
from bot.checkpoints.merging import BakeRequest, MergeRequest, MergeService
from bot.config import Settings
from bot.networks.registry import network_registries
from cli.checkpoints import open_registry
from cli.output import render_entry_line


def progress_bar(unit: str, desc: str) -> tuple[tqdm, Callable[[int, int], None]]:
    """A terminal progress bar and the (done, total) callback that moves it."""
    bar = tqdm(unit=unit, desc=desc, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, progress


async def cmd_merge(args: argparse.Namespace, settings: Settings) -> int:
    request = MergeRequest(
        primary=args.primary,
        secondary=args.secondary,
        tertiary=args.tertiary,
        method=args.method,
        multiplier=args.multiplier,
        bake_vae=args.bake_vae,
        fp16=args.fp16,
        prune=args.prune,
        name=args.name,
    )
    bar, progress = progress_bar("tensor", "merging")

    try:
        async with open_registry(settings) as registry:
            entry = await MergeService(registry).merge(request, progress)
    finally:
        bar.close()
    print(f"merged: {render_entry_line(entry)}")
    parents = [f"{p['role']} {p['name']} ({p['autov2']})" for p in entry.lineage]
    print(f"lineage: {', '.join(parents)}")
    return 0


async def cmd_bake(args: argparse.Namespace, settings: Settings) -> int:
    bar, progress = progress_bar("layer", "baking")

    try:
        async with open_registry(settings) as registry:
            service = MergeService(registry, network_registries(registry.db, settings)[0])
            entry = await service.bake(BakeRequest(args.checkpoint, args.loras, args.name), progress)
    finally:
        bar.close()
    print(f"baked: {render_entry_line(entry)}")
    print(f"description: {entry.description}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bake-lora", help="write LoRAs into a copy of a checkpoint (SuperMerger's merge LoRA)")
    p.add_argument("--checkpoint", required=True, help="registered name, hash, or .safetensors path")
    p.add_argument("--loras", required=True, help='as in a prompt: "<lora:NAME:0.8> <lora:OTHER:0.5:1>"')
    p.add_argument("--name", help="name of the new checkpoint (default: checkpoint-lora-…)")
    p.set_defaults(handler=cmd_bake)

    p = sub.add_parser("merge", help="merge checkpoints as A1111's Checkpoint Merger does; the result is registered")
    p.add_argument("--primary", required=True, help="model A: registered name, hash, or .safetensors path")
    p.add_argument("--secondary", help="model B")
    p.add_argument("--tertiary", help="model C (add_difference: the model B was trained from)")
    p.add_argument("--method", choices=METHODS, required=True, help="(1-M)·A + M·B | A + M·(B-C) | copy A")
    p.add_argument("--multiplier", type=float, default=0.5, help="M, from 0 to 1")
    p.add_argument("--bake-vae", help="a VAE .safetensors to put in place of the model's own")
    p.add_argument("--fp16", action="store_true", help="save float weights as fp16")
    p.add_argument("--prune", action="store_true", help="drop EMA weights (model_ema.*)")
    p.add_argument("--name", help="name of the new checkpoint (default: from its parents)")
    p.set_defaults(handler=cmd_merge)
