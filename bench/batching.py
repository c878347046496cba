"""Throughput of N compatible queued jobs: batched into shared pipeline calls vs one at a time,
measured in interleaved rounds (both services stay up; one round of each in turn).

python bench/batching.py [N] [SIZE] [STEPS] [ROUNDS]   (default 8 jobs, 128 px, 10 steps, 3 rounds; tiny SD1)
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

from bench.harness import checkpoint_ref, median, report, start_service, tiny_checkpoint
from bot.rules.limits import GenerationRequest, Limits
from tests.helpers import queue_unchecked


async def images_per_second(service, ref, n: int, size: int, steps: int, round_: int) -> float:
    started = time.perf_counter()
    handles = [
        await queue_unchecked(
            service,
            GenerationRequest.of(
                prompt=f"prompt {round_} {i}", requester_id=f"user{i}", steps=steps, width=size, height=size, seed=i
            ),
            ref,
        )
        for i in range(n)
    ]
    for handle in handles:
        await handle.wait()
    return n / (time.perf_counter() - started)


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_checkpoint(Path(tmp))
        services = {}
        for name, max_batch in (("single", 1), ("batched", 4)):
            service, db = await start_service(
                Path(tmp) / name, Limits(max_batch_images=max_batch, max_queued_per_user=n)
            )
            ref = await checkpoint_ref(db, path)
            warm = GenerationRequest.of(prompt="warm", requester_id="w", steps=2, width=size, height=size)
            await (await queue_unchecked(service, warm, ref)).wait()
            services[name] = (service, db, ref)
        rates: dict[str, list[float]] = {"single": [], "batched": []}
        try:
            for r in range(rounds):  # interleaved, A B A B, so drift hits both alike
                for name, (service, _, ref) in services.items():
                    rates[name].append(await images_per_second(service, ref, n, size, steps, r))
        finally:
            for service, db, _ in services.values():
                await service.close()
                await db.close()
    single, batched = median(rates["single"]), median(rates["batched"])
    report(
        "batching",
        {
            "jobs": n,
            "size": size,
            "steps": steps,
            "rounds_interleaved": rounds,
            "one_at_a_time_images_per_s": round(single, 3),
            "batched_4_images_per_s": round(batched, 3),
            "ratio_batched_vs_single": round(batched / single, 3),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
