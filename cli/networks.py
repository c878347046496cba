"""CLI commands about the files beside checkpoints: loras|embeddings|upscalers|vaes|text-encoders|controlnets
list|info|add|remove|scan, make-tiny-lora, make-tiny-embedding, make-tiny-vae, make-tiny-controlnet,
make-tiny-upscaler."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bot.components.registry import VaeRegistry
from bot.components.text_encoders import TextEncoderRegistry
from bot.config import Settings
from bot.controlnets.annotators import AnnotatorRegistry
from bot.controlnets.clip_vision import ClipVisionRegistry
from bot.controlnets.registry import ControlNetRegistry
from bot.db import open_database
from bot.detectors import DetectorRegistry
from bot.model_files import file_registries
from bot.networks.registry import (
    EmbeddingRegistry,
    LoraRegistry,
    NetworkEntry,
    NetworkRegistry,
    NetworkScan,
)
from bot.upscalers.registry import UpscalerRegistry
from bot.worker_tools import run_worker_tool
from cli.output import human_size
from common.bundled import TINY_LORA_BASES
from common.control import ANNOTATOR_LAYOUTS


@asynccontextmanager
async def open_network(settings: Settings, kind: type[NetworkRegistry]) -> AsyncIterator[NetworkRegistry]:
    db = await open_database(settings.database_path)
    try:
        registries = file_registries(db, settings)
        yield next(r for r in registries if isinstance(r, kind))
    finally:
        await db.close()


def render_network_line(e: NetworkEntry) -> str:
    flags = (
        ("" if e.loadable else " [cannot apply]")
        + (" [missing]" if e.status == "missing" else "")
        + (" [nsfw]" if e.nsfw else "")
    )
    return f"{e.name:<32} {e.short_hash:<12}  {e.label:<24} {human_size(e.file_size):>9}  {e.relative_path}{flags}"


def render_network(e: NetworkEntry) -> str:
    if e.kind == "upscaler":
        return render_upscaler(e)
    if e.kind == "vae":
        return render_vae(e)
    if e.kind == "text_encoder":
        return render_text_encoder(e)
    if e.kind == "detector":
        return render_detector(e)
    if e.kind in ("controlnet", "clip_vision", "annotator"):
        return render_controlnet(e)
    use = (
        f"<lora:{e.name}:1>  (<lora:{e.name}:TE:UNET> sets the two strengths apart)"
        if e.kind != "embedding"
        else (f"{e.name}  (the word itself, in the prompt or the negative prompt)")
    )
    size = f", rank {e.rank}" if e.rank and e.kind != "embedding" else ""
    lines = [
        f"Name:          {e.name}" + (f" (also {e.alias})" if e.alias and e.alias != e.name else ""),
        f"Title:         {e.display_name}",
        f"Use:           {use}",
        f"Kind:          {e.label} (base decided by {e.decided_by or 'nothing'}), {e.layout} layout{size}",
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


def render_upscaler(e: NetworkEntry) -> str:
    name = e.alias or e.name
    lines = [
        f"Name:          {name}" + (f" (file {e.name})" if e.alias else ""),
        f"Use:           upscale PICTURE --upscaler {name!r} --scale 4; generate --hires 2 --upscaler {name!r}",
        f"Network:       {e.label}, {e.layout} layout; one pass enlarges {e.rank}x",
        f"Status:        {e.status}",
        f"File:          {e.path} ({human_size(e.file_size)}, {e.format})",
        f"Hashes:        sha256 {e.sha256}, AutoV2 {e.autov2.upper()}",
    ]
    return "\n".join(lines)


def render_vae(e: NetworkEntry) -> str:
    lines = [
        f"Name:          {e.name}",
        f"Use:           generate --vae {e.name!r}; /imagine vae:{e.name}; checkpoints edit NAME --vae {e.name!r}",
        f"Kind:          {e.label}, {e.layout} layout",
        f"Status:        {e.status}",
        f"File:          {e.path} ({human_size(e.file_size)}, {e.format})",
        f"Hashes:        sha256 {e.sha256}, VAE hash (A1111) {e.short_hash}",
    ]
    return "\n".join(lines)


def render_controlnet(e: NetworkEntry) -> str:
    lines = [
        f"Name:          {e.name} [{e.short_hash}]",
        f"Use:           generate --control PICTURE:PREPROCESSOR:{e.name}[:WEIGHT]; /control model:{e.name}"
        if e.kind != "annotator"
        else "Use:           chosen by itself for the preprocessors its kind names (generate --control PICTURE:softedge_hed)",
        f"Kind:          {e.label}, {e.layout} layout",
        f"Runs:          {'yes' if e.loadable else 'no: ' + e.reason}",
        f"Status:        {e.status}",
        f"File:          {e.path} ({human_size(e.file_size)}, {e.format})",
        f"Hashes:        sha256 {e.sha256}, model hash (A1111) {e.short_hash}",
    ]
    return "\n".join(lines)


def render_detector(e: NetworkEntry) -> str:
    finds = {"faces": "faces: generate --detail faces (or both); the Fix faces button", "hands": "hands: generate --detail hands (or both)"}
    lines = [
        f"Name:          {e.name} ({e.path.name}, as ADetailer's infotext names it)",
        f"Finds:         {finds.get(e.base, 'what the detail pass does not redraw')}",
        f"Kind:          {e.label}" + (f"; saved by ultralytics {version}" if (version := e.metadata.get("other", {}).get("ultralytics")) else ""),
        f"Runs:          {'yes' if e.loadable else 'no: ' + e.reason}",
        f"Status:        {e.status}",
        f"File:          {e.path} ({human_size(e.file_size)}, {e.format})",
        f"Hashes:        sha256 {e.sha256}",
    ]
    return "\n".join(lines)


def render_text_encoder(e: NetworkEntry) -> str:
    lines = [
        f"Name:          {e.name}",
        f"Use:           taken by transformer-only checkpoints that need a {e.label} {e.rank} wide (Flux)",
        f"Kind:          {e.label}",
        f"Status:        {e.status}",
        f"File:          {e.path} ({human_size(e.file_size)}, {e.format})",
        f"Hashes:        sha256 {e.sha256}",
    ]
    return "\n".join(lines)


def print_network_scan(noun: str, report: NetworkScan) -> None:
    for e in report.added:
        print(f"added     {render_network_line(e)}")
    for e in report.updated:
        print(f"updated   {render_network_line(e)}")
    for e in report.missing:
        print(f"missing   {noun} {e.name} ({e.relative_path})")
    for path, reason in report.errors:
        print(f"skipped   {noun} {path}: {reason}")
    print(f"{noun} scan done: {report.summary()}")


async def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    async with open_network(settings, args.kind) as registry:
        entries = await registry.list(status=args.status, base=args.base)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    elif not entries:
        folder = args.kind.folder_names[0]
        print(f"no {args.kind.noun}s registered; put files in models/{folder} and run `python bot.py checkpoints scan`")
    else:
        for e in entries:
            print(render_network_line(e))
    return 0


async def cmd_info(args: argparse.Namespace, settings: Settings) -> int:
    async with open_network(settings, args.kind) as registry:
        entry = await registry.get(args.name)
    print(json.dumps(entry.to_dict(), indent=2) if args.json else render_network(entry))
    return 0


async def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    async with open_network(settings, args.kind) as registry:
        entry = await registry.add(Path(args.path), name=args.name, nsfw=True if args.nsfw else None)
    print(json.dumps(entry.to_dict(), indent=2) if args.json else f"registered {render_network_line(entry)}")
    return 0


async def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    async with open_network(settings, args.kind) as registry:
        entry = await registry.remove(args.name)
    print(f"removed the {args.kind.noun} {entry.name} from the registry (the file {entry.relative_path} stays)")
    return 0


async def cmd_scan(args: argparse.Namespace, settings: Settings) -> int:
    async with open_network(settings, args.kind) as registry:
        report = await registry.scan()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_network_scan(args.kind.noun, report)
    return 0


async def cmd_make_tiny_lora(args: argparse.Namespace, settings: Settings) -> int:
    locon = ["--locon"] if args.locon else []
    print(await run_worker_tool("make-tiny-lora", "--base", args.base, "--seed", str(args.seed), *locon, args.out))
    return 0


async def cmd_make_tiny_vae(args: argparse.Namespace, settings: Settings) -> int:
    print(await run_worker_tool("make-tiny-vae", "--base", args.base, "--seed", str(args.seed), args.out))
    return 0


async def cmd_make_tiny_controlnet(args: argparse.Namespace, settings: Settings) -> int:
    layout = ["--layout", args.layout] if args.layout else []
    print(await run_worker_tool("make-tiny-controlnet", "--base", args.base, "--seed", str(args.seed), *layout, args.out))
    return 0


async def cmd_make_tiny_ip_adapter(args: argparse.Namespace, settings: Settings) -> int:
    print(await run_worker_tool("make-tiny-ip-adapter", "--base", args.base, "--seed", str(args.seed), args.out))
    return 0


async def cmd_make_tiny_detector(args: argparse.Namespace, settings: Settings) -> int:
    print(await run_worker_tool("make-tiny-detector", "--task", args.task, "--classes", args.classes, args.out))
    return 0


async def cmd_make_tiny_annotator(args: argparse.Namespace, settings: Settings) -> int:
    print(await run_worker_tool("make-tiny-annotator", "--kind", args.kind, "--seed", str(args.seed), args.out))
    return 0


async def cmd_make_tiny_upscaler(args: argparse.Namespace, settings: Settings) -> int:
    argv = ["make-tiny-upscaler", "--layout", args.layout, "--scale", str(args.scale), "--seed", str(args.seed)]
    print(await run_worker_tool(*argv, args.out))
    return 0


async def cmd_make_tiny_embedding(args: argparse.Namespace, settings: Settings) -> int:
    argv = ["make-tiny-embedding", "--base", args.base, "--seed", str(args.seed), "--vectors", str(args.vectors)]
    print(await run_worker_tool(*argv, args.out))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-tiny-lora", help="write a tiny random-weight LoRA for the tiny checkpoints (kohya's layout for SD, ai-toolkit's for Z-Image, Qwen-Image and FLUX.2)"
    )
    p.add_argument("--base", choices=TINY_LORA_BASES, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--locon", action="store_true", help="a LyCORIS LoCon: the ResNet convolutions too")
    p.add_argument("out", type=os.path.abspath)  # the worker process runs from the repository root
    p.set_defaults(handler=cmd_make_tiny_lora)
    p = sub.add_parser("make-tiny-embedding", help="write a tiny random textual-inversion embedding (.safetensors)")
    p.add_argument("--base", choices=("sd1", "sd2", "sdxl"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vectors", type=int, default=2, help="vectors (tokens) the word stands for")
    p.add_argument("out", type=os.path.abspath)
    p.set_defaults(handler=cmd_make_tiny_embedding)
    p = sub.add_parser("make-tiny-vae", help="write a tiny random-weight VAE file for the tiny checkpoints")
    p.add_argument("--base", choices=("sd1", "sd2", "sdxl"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out", type=os.path.abspath)
    p.set_defaults(handler=cmd_make_tiny_vae)
    p = sub.add_parser("make-tiny-controlnet", help="write a tiny random-weight ControlNet for the tiny checkpoints (.safetensors or .pth)")
    p.add_argument("--base", choices=("sd1", "sd2", "sdxl", "flux"), required=True)
    p.add_argument(
        "--layout",
        choices=("original", "diffusers", "union"),
        help="original (A1111's files; SD1/SD2's default), diffusers (SDXL's, Flux's) or union (a ControlNet-Union: SDXL's ProMax, Flux's InstantX Union)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out", type=os.path.abspath)
    p.set_defaults(handler=cmd_make_tiny_controlnet)
    p = sub.add_parser(
        "make-tiny-ip-adapter", help="write a tiny random-weight IP-Adapter (h94's layout) for the tiny checkpoints and the tiny clip-vision encoder"
    )
    p.add_argument("--base", choices=("sd1", "sdxl"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out", type=os.path.abspath)
    p.set_defaults(handler=cmd_make_tiny_ip_adapter)
    p = sub.add_parser(
        "make-tiny-annotator",
        help="write a random-weight annotator in its real layout: hed (ControlNetHED.pth's), lineart (sk_model.pth's) "
        "openpose_body (body_pose_model.pth's, 209 MB) or depth_anything_v2 (tiny, ViT-S's layout)",
    )
    p.add_argument("--kind", choices=ANNOTATOR_LAYOUTS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out", type=os.path.abspath)
    p.set_defaults(handler=cmd_make_tiny_annotator)
    p = sub.add_parser(
        "make-tiny-detector",
        help="write a tiny YOLOv8 detector in ADetailer's layout (face_yolov8n.pt's: an ultralytics model pickle) "
        "whose set weights find bright spots",
    )
    p.add_argument("--task", choices=("detect", "segment"), default="detect", help="boxes, or a -seg model's masks")
    p.add_argument("--classes", default="face", help="what it says it finds, comma-separated (face, hand, person)")
    p.add_argument("out", type=os.path.abspath)
    p.set_defaults(handler=cmd_make_tiny_detector)
    p = sub.add_parser("make-tiny-upscaler", help="write a tiny random-weight upscaler (.pth or .safetensors)")
    p.add_argument("--layout", choices=("esrgan", "realesrgan", "compact"), default="esrgan")
    p.add_argument("--scale", type=int, choices=(1, 2, 4, 8), default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out", type=os.path.abspath)
    p.set_defaults(handler=cmd_make_tiny_upscaler)

    for kind, command, folder in (
        (LoraRegistry, "loras", "models/Lora"),
        (EmbeddingRegistry, "embeddings", "models/embeddings"),
        (UpscalerRegistry, "upscalers", "models/ESRGAN"),
        (VaeRegistry, "vaes", "models/VAE"),
        (TextEncoderRegistry, "text-encoders", "models/text_encoders"),
        (ControlNetRegistry, "controlnets", "models/ControlNet"),
        (ClipVisionRegistry, "clip-vision", "models/clip_vision"),
        (AnnotatorRegistry, "annotators", "models/ControlNetPreprocessor"),
        (DetectorRegistry, "detectors", "models/adetailer"),
    ):
        group = sub.add_parser(command, help=f"the {kind.noun} registry (files in {folder})").add_subparsers(
            dest="action", required=True
        )
        p = group.add_parser("list", help=f"registered {kind.noun}s")
        p.add_argument("--status", choices=("present", "missing"))
        if kind not in (UpscalerRegistry, VaeRegistry, TextEncoderRegistry, ClipVisionRegistry, AnnotatorRegistry, DetectorRegistry):  # ControlNets have a base too
            p.add_argument("--base", choices=("sd1", "sd2", "sdxl"), help=f"only {kind.noun}s for this base model")
        else:
            p.set_defaults(base=None)
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=cmd_list, kind=kind)
        p = group.add_parser("info", help=f"one {kind.noun}: how to use it, its base, hashes")
        p.add_argument("name")
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=cmd_info, kind=kind)
        p = group.add_parser("add", help=f"register a {kind.noun} file from {folder}")
        p.add_argument("path")
        p.add_argument("--name", help="the name prompts use (default: the file name)")
        p.add_argument("--nsfw", action="store_true")
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=cmd_add, kind=kind)
        p = group.add_parser("remove", help=f"forget a {kind.noun} (the file stays)")
        p.add_argument("name")
        p.set_defaults(handler=cmd_remove, kind=kind)
        p = group.add_parser("scan", help=f"register new files in {folder}, mark missing ones")
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=cmd_scan, kind=kind)
