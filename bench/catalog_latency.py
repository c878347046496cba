"""Latency of a catalog search over 10,000 entries: p50/p99 of `CatalogService.search`, excluding the
one-time model load, which is reported separately (it happens in its own process, off the event loop).

Entries are synthetic (names, descriptions and facets drawn from the taxonomy) and embedded with the
real model once, before timing; each question is asked once, so no query-embedding cache helps.
Reported, interleaved in the same run: the whole search; the same search with facets and full text
only (no question embedding); and one question through the embedding model alone, the floor of
any semantic search on this machine. Target: p99 ≤ 20 ms.

python bench/catalog_latency.py [ENTRIES] [QUESTIONS]   (default 10000 300; bench/results/catalog_latency-DATE.json)
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import percentile, report
from bot.catalog.embeddings import EmbeddingProcess
from bot.catalog.entries import CatalogEntry
from bot.catalog.service import CatalogService
from bot.catalog.taxonomy import REALISM, SPECIALITIES, STYLES, TRAINING
from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database

WORDS = (
    "dream vision real photo anime magic shadow crystal neon pastel epic cinema toon pixel ink oil "
    "aurora nova zen spark ember frost velvet lumen mythic retro"
).split()
SUBJECTS = "portraits landscapes castles cars food fashion cats robots forests cities oceans dragons flowers".split()
TEMPLATES = [
    "{style} {subject} for {base}",
    "which checkpoint for {style} {subject}?",
    "best {realism} {subject} model",
    "something {word} for {subject}, no nsfw",
    "{word} {word2} {subject}",
    "{style} model good at {speciality}",
]


class SyntheticCatalog(CatalogService):
    def __init__(self, *args, synthetic: list[CatalogEntry], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.synthetic = synthetic

    async def entries(self) -> list[CatalogEntry]:
        return self.synthetic


def synthetic_entries(n: int, rng: random.Random) -> list[CatalogEntry]:
    entries = []
    for i in range(n):
        name = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{i}"
        styles = rng.sample(STYLES, rng.randint(1, 2))
        specialities = rng.sample(SPECIALITIES, rng.randint(0, 3))
        entries.append(
            CatalogEntry(
                key=f"ref:{name}",
                name=name,
                display_name=name.replace("-", " ").title(),
                installed=rng.random() < 0.2,
                base=rng.choice(["sd1", "sd2", "sdxl"]),
                training=rng.choice(TRAINING),
                styles=styles,
                realism=rng.sample(REALISM, 1),
                specialities=specialities,
                nsfw=rng.random() < 0.1,
                description=f"A {' and '.join(styles)} model for {', '.join(rng.sample(SUBJECTS, 2))} "
                f"with a {rng.choice(WORDS)} look.",
            )
        )
    return entries


def questions(count: int, rng: random.Random) -> list[str]:
    out = []
    for i in range(count):
        out.append(
            rng.choice(TEMPLATES).format(
                style=rng.choice(["anime", "photo", "painterly", "3d", "cartoon", "realistic"]),
                subject=rng.choice(SUBJECTS),
                base=rng.choice(["sdxl", "sd1.5", "sd2"]),
                realism=rng.choice(["realistic", "2.5d", "semi-realistic", "2d"]),
                word=rng.choice(WORDS),
                word2=rng.choice(WORDS),
                speciality=rng.choice(SPECIALITIES),
            )
            + f" {i}"  # every question distinct: no cache hit
        )
    return out


async def main(n: int, count: int) -> None:
    rng = random.Random(1)
    embedder = EmbeddingProcess()
    started = time.perf_counter()
    embedder.start()
    await embedder.wait_ready()
    load = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_database(Path(tmp) / "catalog.sqlite3")
        (Path(tmp) / "models").mkdir()
        registry = CheckpointRegistry(db, Path(tmp) / "models")
        entries = synthetic_entries(n, rng)
        hybrid = SyntheticCatalog(db, registry, embedder, synthetic=entries)
        lexical = SyntheticCatalog(db, registry, None, synthetic=entries)
        t = time.perf_counter()
        await hybrid.refresh()
        build = time.perf_counter() - t
        # Each service builds its own index here, outside the timed loop (whether the embedding model
        # is ready is part of an index's fingerprint, so sharing one made the second rebuild while timed).
        await lexical.refresh()
        for q in questions(20, rng):  # warm-up, both
            await hybrid.search(q)
            await lexical.search(q)
        times: dict[str, list[float]] = {"hybrid": [], "facets_and_text": [], "embedding_only": []}
        for q in questions(count, rng):
            for label, service in (("hybrid", hybrid), ("facets_and_text", lexical)):
                t = time.perf_counter()
                answer = await service.search(q)
                times[label].append((time.perf_counter() - t) * 1000)
                assert answer.hits or answer.help
            t = time.perf_counter()
            await embedder.embed([q + " ."])  # the floor of any semantic search: one question through the model
            times["embedding_only"].append((time.perf_counter() - t) * 1000)
        await db.close()
    await embedder.close()
    report(
        "catalog_latency",
        {
            "entries": n,
            "questions": count,
            "embedding_model_start_s": round(load, 2),
            "embedding_model_load_in_process_s": embedder.load_seconds,
            "index_build_with_embeddings_s": round(build, 2),
            "search_p50_ms": round(percentile(times["hybrid"], 50), 2),
            "search_p99_ms": round(percentile(times["hybrid"], 99), 2),
            "facets_and_text_p50_ms": round(percentile(times["facets_and_text"], 50), 2),
            "facets_and_text_p99_ms": round(percentile(times["facets_and_text"], 99), 2),
            "embedding_only_p50_ms": round(percentile(times["embedding_only"], 50), 2),
            "embedding_only_p99_ms": round(percentile(times["embedding_only"], 99), 2),
            "search_over_embedding_p50": round(
                percentile(times["hybrid"], 50) / percentile(times["embedding_only"], 50), 2
            ),
            "target_p99_ms": 20,
        },
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000, int(sys.argv[2]) if len(sys.argv) > 2 else 300))
