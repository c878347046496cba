"""Answer quality of catalog search: top-1 and top-3 accuracy over bench/data/catalog_eval.yaml
(written with the taxonomy: in-sample) and, reported apart, bench/data/catalog_heldout.yaml
(written afterwards and never used for tuning: what a new question can expect).

The catalog is the bundled reference list (50 checkpoints of SD1, SD2 and SDXL with varied facets);
the ranking is the real one: facets with synonyms, SQLite FTS5 BM25 and all-MiniLM-L6-v2 embeddings.
Target: top-3 ≥ 95 %. Also scored without embeddings, to show what the semantic part adds.

python bench/catalog_eval.py        (writes bench/results/catalog_eval.json)
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

from bench.common import report
from bot.catalog.embeddings import EmbeddingProcess
from bot.catalog.service import CatalogService
from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database

CASES = Path(__file__).resolve().parent / "data" / "catalog_eval.yaml"
HELD_OUT = Path(__file__).resolve().parent / "data" / "catalog_heldout.yaml"


def load_cases(path: Path = CASES) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


async def evaluate(service: CatalogService, cases: list[dict[str, Any]]) -> dict[str, Any]:
    top1 = top3 = 0
    misses = []  # every question whose first answer is not one of the expected ones
    for case in cases:
        answer = await service.search(case["q"], allow_nsfw=case.get("nsfw", True), limit=3)
        names = [h.entry.name for h in answer.hits]
        expect = set(case["expect"])
        rank = next((i + 1 for i, name in enumerate(names) if name in expect), None)
        top1 += rank == 1
        top3 += rank is not None
        if rank != 1:
            misses.append({"question": case["q"], "got": names, "first_right_at": rank, "expected": sorted(expect)})
    n = len(cases)
    return {"questions": n, "top1": round(top1 / n, 4), "top3": round(top3 / n, 4), "misses": misses}


async def catalog_service(folder: Path, embedder: EmbeddingProcess | None) -> CatalogService:
    db = await open_database(folder / "catalog.sqlite3")
    models = folder / "models"
    models.mkdir(exist_ok=True)
    return CatalogService(db, CheckpointRegistry(db, models), embedder)


async def main() -> None:
    cases, held_out = load_cases(), load_cases(HELD_OUT)
    embedder = EmbeddingProcess()
    embedder.start()
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for label, model in (("without_embeddings", None), ("hybrid", embedder)):
            folder = Path(tmp) / label
            folder.mkdir()
            service = await catalog_service(folder, model)
            results[label] = await evaluate(service, cases)
            results[f"{label}_held_out"] = await evaluate(service, held_out)
            entries = len((await service.refresh()).entries)
            await service._db.close()
        await embedder.close()
    for miss in results["hybrid"]["misses"] + results["hybrid_held_out"]["misses"]:
        where = f"right answer at #{miss['first_right_at']}" if miss["first_right_at"] else "not in the top 3"
        print(f"MISS  {miss['question']!r} ({where}): got {miss['got']}, expected one of {miss['expected'][:6]}")
    report(
        "catalog_eval",
        {
            "questions": len(cases),
            "catalog_entries": entries,
            "top1_hybrid": results["hybrid"]["top1"],
            "top3_hybrid": results["hybrid"]["top3"],
            "top1_without_embeddings": results["without_embeddings"]["top1"],
            "top3_without_embeddings": results["without_embeddings"]["top3"],
            "held_out_questions": len(held_out),
            "held_out_top1_hybrid": results["hybrid_held_out"]["top1"],
            "held_out_top3_hybrid": results["hybrid_held_out"]["top3"],
            "held_out_top3_without_embeddings": results["without_embeddings_held_out"]["top3"],
            "misses_held_out_hybrid": results["hybrid_held_out"]["misses"],
            "embedding_model_start_seconds": round(embedder.start_seconds or 0, 2),
            "misses_hybrid": results["hybrid"]["misses"],
            "misses_without_embeddings": results["without_embeddings"]["misses"],
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
