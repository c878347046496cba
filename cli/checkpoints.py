"""CLI commands about checkpoint files: inspect, convert, make-tiny-checkpoint, checkpoints …"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tqdm import tqdm

from bot.catalog.taxonomy import REALISM, SPECIALITIES, STYLES, TRAINING, facet_changes
from bot.checkpoints.convert import convert_to_safetensors
from bot.checkpoints.download import Downloader
from bot.checkpoints.inspection import inspect_checkpoint
from bot.checkpoints.registry import CheckpointRegistry, HashProgress
from bot.components.parts import parts_of_entry
from bot.components.registry import vae_registry
from bot.components.text_encoders import text_encoder_registry
from bot.config import Settings
from bot.db import open_database
from bot.generation.checkpoint_ref import CheckpointRef
from bot.model_files import add_model_file, file_registries, remove_model, scan_models
from bot.networks.registry import NetworkEntry
from bot.worker_tools import run_worker_tool
from cli.networks import print_network_scan, render_network, render_network_line
from cli.output import render_entry, render_entry_line, render_inspection
from common.bundled import TINY_CHECKPOINT_KINDS, TINY_FORMATS
from common.errors import EaselError

PROGRESS_MIN_BYTES = 64 << 20


@asynccontextmanager
async def open_registry(settings: Settings, *, need_models_dir: bool = True) -> AsyncIterator[CheckpointRegistry]:
    root = settings.models_root() if need_models_dir else settings.models_dir.expanduser().resolve()
    db = await open_database(settings.database_path)
    try:
        yield CheckpointRegistry(db, root)
    finally:
        await db.close()


def hash_progress() -> HashProgress:
    """A tqdm bar per large file, on stderr, only when stderr is a terminal."""
    bars: dict[str, tqdm] = {}

    def update(name: str, done: int, total: int) -> None:
        if total < PROGRESS_MIN_BYTES:
            return
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(
                total=total, unit="B", unit_scale=True, desc=f"sha256 {name}", leave=False, disable=None
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


async def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.path)
    # The file is checked before the data directory is touched: a bad file leaves nothing behind.
    inspection = await asyncio.to_thread(inspect_checkpoint, path)
    async with open_registry(settings, need_models_dir=False) as registry:
        inspection.hashes = await registry.hashes(path, hash_progress())
    if args.json:
        _print_json(inspection.to_dict())
    else:
        print(render_inspection(inspection))
    return 0


async def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    out = await asyncio.to_thread(convert_to_safetensors, Path(args.path), Path(args.out) if args.out else None)
    print(f"wrote {out}")
    return 0


async def cmd_make_tiny(args: argparse.Namespace, settings: Settings) -> int:
    # Said here, before the worker's tool starts (it imports torch: seconds for a one-line refusal).
    wanted = ".gguf" if args.format.startswith("gguf-") else ".safetensors"
    if Path(args.out).suffix.lower() != wanted:
        raise EaselError(f"{args.out}: the output must end in {wanted}")
    flags = [flag for flag, on in (("--inpainting", args.inpainting), ("--fp8", args.fp8)) if on]
    if args.parts:
        flags += ["--parts", args.parts]
    if args.format != "plain":
        flags += ["--format", args.format]
    argv = ["make-tiny-checkpoint", "--arch", args.arch, "--seed", str(args.seed), *flags, args.out]
    print(await run_worker_tool(*argv))
    return 0


async def cmd_make_tiny_component(args: argparse.Namespace, settings: Settings) -> int:
    print(await run_worker_tool("make-tiny-component", "--kind", args.kind, "--seed", str(args.seed), args.out))
    return 0


async def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    tags = [t for t in args.tags.split(",")] if args.tags is not None else None
    async with open_registry(settings) as registry:
        entry = await add_model_file(
            registry,
            file_registries(registry.db, settings),
            Path(args.path),
            name=args.name,
            description=args.description,
            tags=tags,
            nsfw=True if args.nsfw else None,
            progress=hash_progress(),
        )
    if args.json:
        _print_json(entry.to_dict())
    elif isinstance(entry, NetworkEntry):
        print(f"registered {render_network_line(entry)}")
    else:
        print(f"registered {entry.name} ({entry.autov2.upper()}, {entry.architecture})")
        if not entry.runnable:
            print(f"note: not runnable: {entry.inspection['architecture_info']['reason']}")
    return 0


async def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    async with open_registry(settings, need_models_dir=False) as registry:
        entries = await registry.list(status=args.status)
    if args.json:
        _print_json([e.to_dict() for e in entries])
    elif not entries:
        print("no checkpoints registered; add one with `python bot.py checkpoints add PATH` or `checkpoints scan`")
    else:
        for e in entries:
            print(render_entry_line(e))
    return 0


async def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    async with open_registry(settings, need_models_dir=False) as registry:
        entry = await registry.get(args.name)
        ref = CheckpointRef.from_entry(entry)
        parts = await parts_of_entry(
            ref.needs, ref.family, ref.vae_sha256, text_encoder_registry(registry.db, settings), vae_registry(registry.db, settings)
        )
    if args.json:
        _print_json(entry.to_dict() | ({"parts": parts.lines()} if ref.needs else {}))
    else:
        print(render_entry(entry))
        for line in parts.lines():  # what a transformer-only file runs with, and what it still lacks
            print(f"Needs:         {line}")
    return 0


async def cmd_edit(args: argparse.Namespace, settings: Settings) -> int:
    tags = args.tags.split(",") if args.tags is not None else None
    try:
        facets = facet_changes(
            styles=args.styles,
            realism=args.realism,
            specialities=args.good_at,
            training=args.training,
            trigger_words=args.trigger_words,
        )
    except ValueError as e:
        raise EaselError(str(e)) from None
    async with open_registry(settings, need_models_dir=False) as registry:
        vae = None
        if args.vae is not None:
            target = await registry.get(args.name)
            vae = await vae_registry(registry.db, settings).default_sha256(args.vae, target.family)
        entry = await registry.edit(
            args.name,
            name=args.rename,
            description=args.description,
            tags=tags,
            nsfw=args.nsfw,
            facets=facets,
            vae_sha256=vae,
        )
    print(render_entry(entry))
    return 0


async def cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    bar: tqdm | None = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="download", leave=False, disable=None)
        bar.update(done - bar.n)

    async with open_registry(settings) as registry:
        downloader = Downloader.from_settings(registry, settings, file_registries(registry.db, settings))
        try:
            entry = await downloader.download(
                args.source, name=args.name, sha256=args.sha256, nsfw=args.nsfw, progress=progress
            )
        finally:
            if bar is not None:
                bar.close()
    print(render_network(entry) if isinstance(entry, NetworkEntry) else render_entry(entry))
    return 0


async def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    async with open_registry(settings, need_models_dir=False) as registry:
        entry = await remove_model(registry, file_registries(registry.db, settings), args.name)
    kind = f"the {entry.label} " if isinstance(entry, NetworkEntry) else ""
    print(f"removed {kind}{entry.name} from the registry (the file {entry.relative_path} was left in place)")
    return 0


async def cmd_scan(args: argparse.Namespace, settings: Settings) -> int:
    async with open_registry(settings) as registry:
        networks = file_registries(registry.db, settings)
        report, others = await scan_models(registry, networks, hash_progress())
    if args.json:
        _print_json(report.to_dict() | {n.table: o.to_dict() for n, o in zip(networks, others, strict=True)})
        return 0
    for e in report.added:
        print(f"added     {render_entry_line(e)}")
    for e in report.updated:
        print(f"updated   {render_entry_line(e)}")
    for e in report.restored:
        print(f"restored  {render_entry_line(e)}")
    for e in report.missing:
        print(f"missing   {e.name} ({e.relative_path})")
    for path, reason in report.errors:
        print(f"skipped   {path}: {reason}")
    print(
        f"scan done: {len(report.added)} added, {len(report.updated)} updated, {len(report.restored)} restored, "
        f"{len(report.missing)} missing, {report.unchanged} unchanged, {len(report.errors)} skipped"
    )
    for network, scanned in zip(networks, others, strict=True):
        if scanned.added or scanned.updated or scanned.missing or scanned.errors or scanned.unchanged:
            print_network_scan(network.noun, scanned)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="identify, hash and describe a checkpoint file (reads only its header)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("convert", help="write a .safetensors copy of a .ckpt/.pt checkpoint (nothing in it is run)")
    p.add_argument("path")
    p.add_argument("--out", help="output file (default: PATH with a .safetensors suffix)")
    p.set_defaults(handler=cmd_convert)

    p = sub.add_parser("make-tiny-checkpoint", help="write a tiny random-weight checkpoint for tests and demos")
    p.add_argument(
        "--arch",
        choices=TINY_CHECKPOINT_KINDS,
        required=True,
        help="flux: all-in-one (ComfyUI's layout); flux-transformer: BFL's transformer-only file; flux-kontext: "
        "FLUX.1 Kontext dev, an edit model (BFL's file); sd35, sd35-medium: SAI's shape (text encoders apart); "
        "sd35-all-in-one (see make-tiny-component); z-image, qwen-image: the transformer as Comfy-Org ship it; "
        "z-image-all-in-one, qwen-image-all-in-one; qwen-image-edit: Qwen-Image-Edit Plus, an edit model; chroma; "
        "flux2-klein, flux2-klein-base: FLUX.2 [klein] as BFL ship it (it edits pictures too)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inpainting", action="store_true", help="a 9-channel UNet, as inpainting models have")
    p.add_argument("--fp8", action="store_true", help="Flux: store the transformer's matrices as float8_e4m3fn")
    p.add_argument(
        "--format",
        choices=TINY_FORMATS,
        default="plain",
        help="flow models: fp8-scaled, the transformer's matrices as ComfyUI's scaled fp8 files keep them (fp8 "
        "beside a per-tensor scale); gguf-q8_0, gguf-q4_k: the transformer alone as city96's GGUF files hold it "
        "(OUT must end in .gguf); the same weights as the plain file of the seed, quantised",
    )
    p.add_argument(
        "--parts",
        metavar="MODELS_DIR",
        type=os.path.abspath,
        help="a transformer-only file (flux-transformer, flux-kontext, z-image): also write the text encoders and VAE "
        "it needs into MODELS_DIR/text_encoders and MODELS_DIR/VAE, where a user would have them",
    )
    p.add_argument("out", type=os.path.abspath)  # the worker process runs from the repository root
    p.set_defaults(handler=cmd_make_tiny)

    p = sub.add_parser(
        "make-tiny-component",
        help="write a tiny text encoder or VAE file, for the tiny Flux (clip-l, t5xxl, flux-vae) or SD3.5 (sd3-…) files, "
        "or the CLIP vision encoder (clip-vision) the tiny IP-Adapters read with",
    )
    p.add_argument("--kind", choices=("clip-l", "t5xxl", "flux-vae", "sd3-clip-l", "sd3-clip-g", "sd3-t5xxl", "clip-vision"), required=True)
    p.add_argument("--seed", type=int, default=0, help="the seed of the tiny Flux file it goes with")
    p.add_argument("out", type=os.path.abspath)
    p.set_defaults(handler=cmd_make_tiny_component)

    ck = sub.add_parser("checkpoints", help="the checkpoint registry").add_subparsers(dest="action", required=True)
    p = ck.add_parser("add", help="register a checkpoint file from the models directory")
    p.add_argument("path")
    p.add_argument("--name")
    p.add_argument("--description")
    p.add_argument("--tags", help="comma-separated")
    p.add_argument("--nsfw", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_add)
    p = ck.add_parser("list", help="list registered checkpoints")
    p.add_argument("--status", choices=("present", "missing"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list)
    p = ck.add_parser("show", help="everything known about one checkpoint")
    p.add_argument("name", help="name, or AutoV2 / sha256 hash")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_show)
    p = ck.add_parser("edit", help="change a checkpoint's name, description, tags, catalog facets or NSFW flag")
    p.add_argument("name")
    p.add_argument("--rename", help="new name")
    p.add_argument("--description")
    p.add_argument("--tags", help="comma-separated; replaces the current tags")
    p.add_argument("--nsfw", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--styles", help=f'comma-separated: {", ".join(STYLES)} ("" clears)')
    p.add_argument("--realism", help=f"comma-separated: {', '.join(REALISM)}")
    p.add_argument("--good-at", help=f"comma-separated: {', '.join(SPECIALITIES)}")
    p.add_argument("--training", help=f"one of {', '.join(TRAINING)}")
    p.add_argument("--trigger-words", help="comma-separated words the checkpoint was trained on")
    p.add_argument("--vae", help="its default VAE from models/VAE (A1111's SD VAE); none: its own again")
    p.set_defaults(handler=cmd_edit)
    p = ck.add_parser("download", help="download a checkpoint by URL or civitai:VERSION_ID and register it")
    p.add_argument("source", help="an http(s) URL of a .safetensors file, or civitai:VERSION_ID")
    p.add_argument("--name", help="registry name (default: from the file)")
    p.add_argument("--sha256", help="expected sha256 (Civitai sources carry their own)")
    p.add_argument("--nsfw", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(handler=cmd_download)
    p = ck.add_parser("remove", help="forget a checkpoint (the file stays)")
    p.add_argument("name")
    p.set_defaults(handler=cmd_remove)
    p = ck.add_parser("scan", help="register new files under the models directory, mark missing ones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_scan)
