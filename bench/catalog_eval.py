"""Answer quality of catalog search: top-1, top-3 and MRR over a development half
(bench/data/catalog_dev.yaml, which the taxonomy and ranking may be tuned on) and a test half
(bench/data/catalog_test.yaml, never used for tuning: what a new question can expect), each for the
hybrid ranking and for each signal alone (facets, full text, meaning, the currency prior).

The catalog is the bundled reference list (every family Easel runs, with their facts); the ranking
is the real one: facets with synonyms, SQLite FTS5 BM25, all-MiniLM-L6-v2 embeddings and the prior.
Goal: top-3 >= 95 % on the test half, and for "which checkpoint for anime?" a top three of current
anime families.

python bench/catalog_eval.py        (writes bench/results/catalog_eval-DATE.json)
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from bench.harness import report
from bot.catalog.embeddings import EmbeddingProcess
from bot.catalog.query import refined
from bot.catalog.service import CatalogService
from bot.catalog.sources import reference_entries
from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database

DATA = Path(__file__).resolve().parent / "data"
HALVES = {"dev": DATA / "catalog_dev.yaml", "test": DATA / "catalog_test.yaml"}
SIGNALS = ("hybrid", "facets", "text", "meaning", "prior")
# What an expert names for anime in 2026: the Illustrious, NoobAI, Pony and Animagine 4 lines.
CURRENT_ANIME = {
    "illustrious-xl", "noobai-xl", "noobai-xl-v-pred", "wai-nsfw-illustrious-sdxl", "hassaku-xl-illustrious",
    "animagine-xl-4.0", "pony-diffusion-v6-xl", "autismmix-sdxl",
}  # fmt: skip


def load_cases(path: Path) -> list[dict[str, Any]]:
    cases = yaml.safe_load(path.read_text(encoding="utf-8"))
    known = {e.name for e in reference_entries()}
    for case in cases:
        unknown = set(case["expect"]) - known
        if unknown:
            raise ValueError(f"{path.name}: {case['q']!r} expects entries the catalog lacks: {sorted(unknown)}")
    return cases


def question(case: dict[str, Any]) -> str:
    """The text asked: a follow-up is the first question refined by what was added."""
    asked = case["q"]
    if isinstance(asked, str):
        return asked
    text = asked[0]
    for addition in asked[1:]:
        text = refined(text, addition)
    return text


async def evaluate(service: CatalogService, cases: list[dict[str, Any]], signal: str = "") -> dict[str, Any]:
    top1 = top3 = 0
    reciprocal = 0.0
    misses = []  # every question whose first answer is not one of the expected ones
    for case in cases:
        text = question(case)
        answer = await service.search(text, allow_nsfw=case.get("nsfw", True), limit=10, signal=signal)
        names = [h.entry.name for h in answer.hits]
        expect = set(case["expect"])
        rank = next((i + 1 for i, name in enumerate(names) if name in expect), None)
        top1 += rank == 1
        top3 += rank is not None and rank <= 3
        reciprocal += 1 / rank if rank else 0.0
        if rank != 1:
            misses.append({"question": text, "got": names[:3], "first_right_at": rank, "expected": sorted(expect)})
    n = len(cases)
    return {
        "questions": n,
        "top1": round(top1 / n, 4),
        "top3": round(top3 / n, 4),
        "mrr": round(reciprocal / n, 4),
        "misses": misses,
    }


async def catalog_service(folder: Path, embedder: EmbeddingProcess | None) -> CatalogService:
    db = await open_database(folder / "catalog.sqlite3")
    models = folder / "models"
    models.mkdir(exist_ok=True)
    return CatalogService(db, CheckpointRegistry(db, models), embedder)


async def main() -> None:
    halves = {half: load_cases(path) for half, path in HALVES.items()}
    embedder = EmbeddingProcess()
    embedder.start()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        service = await catalog_service(Path(tmp), embedder)
        for half, cases in halves.items():
            for signal in SIGNALS:
                results[f"{half}_{signal}"] = await evaluate(service, cases, "" if signal == "hybrid" else signal)
        anime = await service.search("which checkpoint for anime?", limit=3)
        entries = len((await service.refresh()).entries)
        await service._db.close()
    await embedder.close()
    for half in halves:
        for miss in results[f"{half}_hybrid"]["misses"]:
            where = f"right answer at #{miss['first_right_at']}" if miss["first_right_at"] else "not in the top 10"
            print(
                f"{half.upper()} MISS  {miss['question']!r} ({where}): got {miss['got']}, expected one of {miss['expected'][:6]}"
            )
    print(f"{'':6} {'signal':8} {'top-1':>6} {'top-3':>6} {'MRR':>6}")
    for key, value in results.items():
        half, signal = key.split("_", 1)
        print(f"{half:6} {signal:8} {value['top1']:6.3f} {value['top3']:6.3f} {value['mrr']:6.3f}")
    top_anime = [h.entry.name for h in anime.hits]
    print(f"which checkpoint for anime? -> {top_anime} (all current anime families: {set(top_anime) <= CURRENT_ANIME})")
    report(
        "catalog_eval",
        {
            "catalog_entries": entries,
            "questions": {half: len(cases) for half, cases in halves.items()},
            **{f"{key}_{m}": value[m] for key, value in results.items() for m in ("top1", "top3", "mrr")},
            "anime_top3": top_anime,
            "anime_top3_current": set(top_anime) <= CURRENT_ANIME,
            "embedding_model_start_seconds": round(embedder.start_seconds or 0, 2),
            "misses_dev_hybrid": results["dev_hybrid"]["misses"],
            "misses_test_hybrid": results["test_hybrid"]["misses"],
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
