"""`python bot.py catalog …`: search the catalog, show an entry, enrich from Civitai, compare checkpoints."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bot.catalog.compare import finish_compare
from bot.catalog.embeddings import EmbeddingProcess
from bot.catalog.entries import CatalogEntry
from bot.catalog.live import civitai_line
from bot.catalog.query import REFINEMENTS, refined
from bot.catalog.service import Answer, CatalogService
from bot.checkpoints.registry import CheckpointRegistry
from bot.config import Settings
from bot.db import open_database
from bot.generation.service import GenerationService
from bot.generation.workers import worker_configs
from bot.jobs import Asker, Jobs, Place
from bot.networks.registry import network_registries
from bot.rules.limits import Limits
from common.errors import EaselError


@asynccontextmanager
async def open_catalog(
    settings: Settings, *, semantic: bool = True, live: bool = False
) -> AsyncIterator[CatalogService]:
    root = settings.models_root()
    db = await open_database(settings.database_path)
    embedder = (
        EmbeddingProcess(cache_dir=settings.data_dir / "cache") if semantic and settings.semantic_search else None
    )
    if embedder is not None:
        embedder.start()  # loads while the database is read
    service = CatalogService(
        db,
        CheckpointRegistry(db, root),
        embedder,
        civitai_api_key=settings.civitai_key,
        loras=network_registries(db, settings)[0],
        live_search=live or settings.catalog_live_search,
    )
    try:
        yield service
    finally:
        await service.close()
        await db.close()


def render_answer(answer: Answer) -> str:
    if answer.help:
        return answer.help
    lines = [f"Question: {answer.question}", f"Read as:  {answer.understood or '(free text)'}", ""]
    for i, hit in enumerate(answer.hits, 1):
        e = hit.entry
        where = "installed" if e.installed else "not installed"
        lines.append(f"{i}. {e.display_name} [{e.name}] ({where})")
        lines.append(f"   why: {hit.why}")
        lines.append(f"   try: {hit.try_}")
    if answer.loras:
        lines.append(f"LoRAs for {answer.loras[0].entry.base_label} that fit:")
        lines.extend(f"   <lora:{h.entry.name}:1>  ({', '.join(h.matched)})" for h in answer.loras)
    if answer.civitai:
        lines.append("Also on Civitai (not installed here; live search):")
        lines.extend(f"   {civitai_line(m)}" for m in answer.civitai)
    lines.extend(f"note: {note}" for note in answer.notes)
    return "\n".join(lines)


def render_entry(entry: CatalogEntry) -> str:
    def facet(name: str, values: object) -> str:
        shown = ", ".join(values) if isinstance(values, list) else str(values)
        source = entry.sources.get(name)
        return f"{shown or '-'}" + (f"  ({source})" if source and shown else "")

    lines = [
        f"{entry.display_name} [{entry.name}]" + ("" if entry.installed else "  (reference only: not installed)"),
        f"Base:          {entry.base_label}" + (f" · {entry.architecture}" if entry.architecture else ""),
        f"Training:      {facet('training', entry.training)}",
        f"Styles:        {facet('styles', entry.styles)}",
        f"Realism:       {facet('realism', entry.realism)}",
        f"Good at:       {facet('specialities', entry.specialities)}",
        f"Trigger words: {facet('trigger_words', entry.trigger_words)}",
        f"NSFW:          {'yes' if entry.nsfw else 'no'}",
    ]
    if entry.known_as:
        lines.append(f"Recognised as: {entry.known_as}")
    if entry.lineage:
        lines.append(f"Merged from:   {', '.join(entry.lineage)}")
    if entry.source_url:
        lines.append(f"Source:        {entry.source_url}")
    if entry.preview:
        lines.append(f"Preview:       {entry.preview}")
    if entry.description:
        lines.append(f"Description:   {entry.description}")
    return "\n".join(lines)


async def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    async with open_catalog(settings, semantic=not args.no_semantic, live=args.live) as catalog:
        question = args.question
        for key in args.refine or []:  # what the answer's buttons add on Discord
            question = refined(question, REFINEMENTS[key][1])
        answer = await catalog.search(question, allow_nsfw=not args.sfw, limit=args.limit)
    print(json.dumps(answer.to_dict(), indent=2) if args.json else render_answer(answer))
    return 0


async def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    async with open_catalog(settings, semantic=False) as catalog:
        entry = await catalog.get(args.name)
    if entry is None:
        raise EaselError(f"no catalog entry named {args.name!r}; `catalog search` finds names")
    print(json.dumps(entry.to_dict(), indent=2) if args.json else render_entry(entry))
    return 0


async def cmd_enrich(args: argparse.Namespace, settings: Settings) -> int:
    async with open_catalog(settings, semantic=False) as catalog:
        report = await catalog.enrich(refresh=args.refresh)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 1 if report.error and not (report.found or report.missing or report.cached) else 0


async def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    out = Path(args.out)
    if await asyncio.to_thread(out.is_dir):
        raise EaselError(f"--out {out} is a folder; give a file name such as compare.png")
    db = await open_database(settings.database_path)
    registry = CheckpointRegistry(db, settings.models_dir.expanduser().resolve())
    limits = Limits(max_queued_per_user=1000)  # the CLI is not limited
    workers = worker_configs(settings.devices[:1], settings.cache_device_gb, None, **settings.engine())
    service = GenerationService(db, workers, limits, preview_every=0)  # a terminal shows no previews
    jobs = Jobs(
        registry,
        service,
        None,
        *network_registries(db, settings),
        extra_terms=(settings.minor_terms, settings.sexual_terms),
    )
    try:
        # Every rule and every bad option is checked here, before a worker starts.
        plan = await jobs.plan_compare(
            Asker.host(os.environ.get("USER", "cli")),
            Place.command_line(),
            args.prompt,
            args.checkpoints.split(","),
            args.seed,
            negative=args.negative,
            steps=args.steps,
            cfg=args.cfg,
            sampler=args.sampler,
        )
        print(f"starting the worker on {settings.devices[0]}…", file=sys.stderr, flush=True)
        await service.start()
        result = await finish_compare(service, await jobs.start(plan), args.prompt, plan.seed)
    finally:
        await service.close()
        await db.close()
    await asyncio.to_thread(out.write_bytes, result.png)
    names = ", ".join(f"{name} [{autov2.upper()}]" for name, autov2 in result.tiles)
    print(f"wrote {out}: {names}; seed {result.seed}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    catalog = sub.add_parser("catalog", help="find the right checkpoint: search, show, enrich, compare")
    csub = catalog.add_subparsers(dest="catalog_command", required=True)
    p = csub.add_parser("search", help='answer a question such as "which checkpoint for anime?"')
    p.add_argument("question")
    p.add_argument("--limit", type=int, default=5, choices=range(1, 26), metavar="1..25")
    p.add_argument("--sfw", action="store_true", help="leave out NSFW checkpoints")
    p.add_argument(
        "--refine", action="append", choices=sorted(REFINEMENTS), help="ask again with this added (repeatable)"
    )
    p.add_argument("--no-semantic", action="store_true", help="facets and full text only (no embedding model)")
    p.add_argument(
        "--live", action="store_true", help="also ask Civitai for checkpoints not installed (EASEL_CATALOG_LIVE_SEARCH)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_search)
    p = csub.add_parser("show", help="everything the catalog knows of one entry, with where each facet came from")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_show)
    p = csub.add_parser("enrich", help="look up installed checkpoints on Civitai by hash (cached)")
    p.add_argument("--refresh", action="store_true", help="ask again even where a recent answer is cached")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_enrich)
    p = csub.add_parser("compare", help="the same prompt and seed on several checkpoints, as one labelled grid")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="")
    p.add_argument("--checkpoints", required=True, help="two to six registered names, comma-separated")
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--sampler", default="DPM++ 2M")
    p.add_argument("--out", default="compare.png")
    p.set_defaults(handler=cmd_compare)
