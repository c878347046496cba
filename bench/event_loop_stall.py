"""Does the bot's event loop stall while the worker is saturated? A 10 ms ticker on the loop
measures how late each tick fires: max and p99 lag, idle (baseline) and saturated, in one run.
Target: p99 < 10 ms while saturated.

python bench/event_loop_stall.py [SECONDS]   (default 20)
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

from bench.common import checkpoint_ref, percentile, report, start_service, tiny_checkpoint
from bot.generation.requests import GenerationRequest, Limits

TICK = 0.010


async def ticker(seconds: float) -> list[float]:
    lags: list[float] = []
    deadline = time.perf_counter() + seconds
    expected = time.perf_counter() + TICK
    while time.perf_counter() < deadline:
        await asyncio.sleep(max(0.0, expected - time.perf_counter()))
        now = time.perf_counter()
        lags.append(now - expected)
        expected = max(expected + TICK, now)
    return lags


async def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_checkpoint(Path(tmp))
        service, db = await start_service(Path(tmp), Limits(max_queued_per_user=100, max_queue=1000), preview_every=1)
        ref = await checkpoint_ref(db, path)
        idle = await ticker(seconds / 4)
        handles = []

        async def keep_busy() -> None:
            # Many small jobs with a preview every step: the most events per second the loop must take.
            for i in range(400):
                request = GenerationRequest(
                    prompt=f"p{i}", requester_id=f"u{i % 20}", steps=8, width=64, height=64, seed=i
                )
                handles.append(await service.submit(request, ref))
                if len(service._queue) > 30:
                    await asyncio.sleep(0.2)

        feeder = asyncio.create_task(keep_busy())
        busy = await ticker(seconds)
        feeder.cancel()
        events = sum(h._events.qsize() for h in handles)
        await service.close()
        await db.close()
    ms = 1000
    report(
        "event_loop_stall",
        {
            "seconds_saturated": seconds,
            "jobs_submitted": len(handles),
            "idle_p99_ms": round(percentile(idle, 99) * ms, 3),
            "idle_max_ms": round(max(idle) * ms, 3),
            "saturated_p99_ms": round(percentile(busy, 99) * ms, 3),
            "saturated_max_ms": round(max(busy) * ms, 3),
            "undelivered_events_at_end": events,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
