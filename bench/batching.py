"""Throughput of N compatible queued jobs: batched into shared pipeline calls vs one at a time.

python bench/batching.py [N] [SIZE] [STEPS]   (default 8 jobs, 128 px, 10 steps; tiny SD1)
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import checkpoint_ref, report, start_service, tiny_checkpoint
from bot.generation.requests import GenerationRequest, Limits


async def images_per_second(folder: Path, path: Path, max_batch: int, n: int, size: int, steps: int) -> float:
    service, db = await start_service(folder, Limits(max_batch_images=max_batch, max_queued_per_user=n))
    try:
        ref = await checkpoint_ref(db, path)
        warm = GenerationRequest(prompt="warm", requester_id="w", steps=2, width=size, height=size)
        await (await service.submit(warm, ref)).wait()
        started = time.perf_counter()
        handles = [
            await service.submit(
                GenerationRequest(
                    prompt=f"prompt {i}", requester_id=f"user{i}", steps=steps, width=size, height=size, seed=i
                ),
                ref,
            )
            for i in range(n)
        ]
        for handle in handles:
            await handle.wait()
        return n / (time.perf_counter() - started)
    finally:
        await service.close()
        await db.close()


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_checkpoint(Path(tmp))
        single = await images_per_second(Path(tmp) / "one", path, 1, n, size, steps)
        batched = await images_per_second(Path(tmp) / "four", path, 4, n, size, steps)
    report(
        "batching",
        {
            "jobs": n,
            "size": size,
            "steps": steps,
            "one_at_a_time_images_per_s": round(single, 3),
            "batched_4_images_per_s": round(batched, 3),
            "ratio_batched_vs_single": round(batched / single, 3),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
