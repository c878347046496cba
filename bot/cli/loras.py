"""CLI commands about LoRAs: loras list|info|add|remove|scan, make-tiny-lora."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bot.cli.output import human_size
from bot.cli.worker_tools import run_worker_tool
from bot.config import Settings
from bot.db import open_database
from bot.loras.registry import LoraEntry, LoraRegistry, LoraScan


@asynccontextmanager
async def open_loras(settings: Settings) -> AsyncIterator[LoraRegistry]:
    db = await open_database(settings.database_path)
    try:
        yield LoraRegistry(db, settings.models_dir.expanduser().resolve())
    finally:
        await db.close()


def render_lora_line(e: LoraEntry) -> str:
    flags = (
        ("" if e.loadable else " [cannot apply]")
        + (" [missing]" if e.status == "missing" else "")
        + (" [nsfw]" if e.nsfw else "")
    )
    return f"{e.name:<32} {e.short_hash:<12}  {e.label:<24} {human_size(e.file_size):>9}  {e.relative_path}{flags}"


def render_lora(e: LoraEntry) -> str:
    lines = [
        f"Name:          {e.name}" + (f" (also {e.alias})" if e.alias and e.alias != e.name else ""),
        f"Title:         {e.display_name}",
        f"Use:           <lora:{e.name}:1>  (<lora:{e.name}:TE:UNET> sets the two strengths apart)",
        f"Kind:          {e.label} (base decided by {e.decided_by or 'nothing'}), {e.layout} layout"
        + (f", rank {e.rank}" if e.rank else ""),
        f"Applies:       {'yes' if e.loadable else 'no: ' + e.reason}",
        f"Status:        {e.status}",
        f"File:          {e.path} ({human_size(e.file_size)})",
        f"Hashes:        sha256 {e.sha256}, AutoV2 {e.autov2.upper()}, A1111 short hash {e.short_hash}",
    ]
    if e.trigger_words:
        lines.append(f"Trigger words: {', '.join(e.trigger_words)}")
    if e.description:
        lines.append(f"Description:   {e.description[:300]}")
    if e.nsfw:
        lines.append("NSFW:          yes")
    return "\n".join(lines)


def print_lora_scan(report: LoraScan) -> None:
    for e in report.added:
        print(f"added     LoRA {render_lora_line(e)}")
    for e in report.updated:
        print(f"updated   LoRA {render_lora_line(e)}")
    for e in report.missing:
        print(f"missing   LoRA {e.name} ({e.relative_path})")
    for path, reason in report.errors:
        print(f"skipped   LoRA {path}: {reason}")
    print(
        f"LoRA scan done: {len(report.added)} added, {len(report.updated)} updated, {len(report.missing)} missing, "
        f"{report.unchanged} unchanged, {len(report.errors)} skipped"
    )


async def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    async with open_loras(settings) as loras:
        entries = await loras.list(status=args.status, base=args.base)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    elif not entries:
        print("no LoRAs registered; put .safetensors files in models/Lora and run `python bot.py loras scan`")
    else:
        for e in entries:
            print(render_lora_line(e))
    return 0


async def cmd_info(args: argparse.Namespace, settings: Settings) -> int:
    async with open_loras(settings) as loras:
        entry = await loras.get(args.name)
    print(json.dumps(entry.to_dict(), indent=2) if args.json else render_lora(entry))
    return 0


async def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    async with open_loras(settings) as loras:
        entry = await loras.add(Path(args.path), name=args.name, nsfw=True if args.nsfw else None)
    print(json.dumps(entry.to_dict(), indent=2) if args.json else f"registered LoRA {render_lora_line(entry)}")
    return 0


async def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    async with open_loras(settings) as loras:
        entry = await loras.remove(args.name)
    print(f"removed the LoRA {entry.name} from the registry (the file {entry.relative_path} was left in place)")
    return 0


async def cmd_scan(args: argparse.Namespace, settings: Settings) -> int:
    async with open_loras(settings) as loras:
        report = await loras.scan()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_lora_scan(report)
    return 0


async def cmd_make_tiny_lora(args: argparse.Namespace, settings: Settings) -> int:
    print(await run_worker_tool("make-tiny-lora", "--base", args.base, "--seed", str(args.seed), args.out))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny-lora", help="write a tiny random-weight LoRA (kohya layout) for the tiny checkpoints")
    p.add_argument("--base", choices=("sd1", "sd2", "sdxl"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out", type=os.path.abspath)  # the worker process runs from the repository root
    p.set_defaults(handler=cmd_make_tiny_lora)

    lo = sub.add_parser("loras", help="the LoRA registry (files in models/Lora)").add_subparsers(
        dest="action", required=True
    )
    p = lo.add_parser("list", help="registered LoRAs")
    p.add_argument("--status", choices=("present", "missing"))
    p.add_argument("--base", choices=("sd1", "sd2", "sdxl"), help="only LoRAs for this base model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list)
    p = lo.add_parser("info", help="one LoRA: how to use it, its base, hashes and trigger words")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_info)
    p = lo.add_parser("add", help="register a LoRA file from a LoRA folder")
    p.add_argument("path")
    p.add_argument("--name", help="the name prompts use (default: the file name)")
    p.add_argument("--nsfw", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_add)
    p = lo.add_parser("remove", help="forget a LoRA (the file stays)")
    p.add_argument("name")
    p.set_defaults(handler=cmd_remove)
    p = lo.add_parser("scan", help="register new files in the LoRA folders, mark missing ones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_scan)
