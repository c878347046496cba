"""What the generation service's queue costs as it grows: 100, 1,000 and 10,000 jobs waiting.

A service whose one worker never starts (nothing is dispatched, so the queue only grows), its jobs from 50 users
(the round-robin's real shape). At each size, repeated and interleaved: one more job admitted (its
database row, the queue, and its own first place, said from the queue lengths), the first job
cancelled (its user's jobs move up), and one dispatch (the head leaves, its user goes to the back of
the rotation: every place moves), each timed with the Queued announcements it made (none but the
new job's own: places are read by the front ends when they ask); then a round of reads after the
dispatch, every waiting job's front end asking its place once (one walk of the fair order, shared);
and the event loop's longest stall while they ran (a 1 ms ticker beside them).

    python bench/queue_scale.py [--sizes 100,1000,10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import report, spread
from bot.db import open_database
from bot.generation.service import GenerationService
from bot.rules.limits import GenerationRequest, Limits, validate
from common.worker_config import WorkerConfig
from tests.helpers import checkpoint_ref

USERS = 50


async def stall_while(work) -> tuple[object, float]:
    """Run `work` (a coroutine) beside a 1 ms ticker: its result and the ticker's longest late wake."""
    worst = 0.0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - before - 0.001)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    result = await work
    done.set()
    await ticker
    return result, worst


async def measure(size: int, repeats: int, folder: Path) -> dict[str, object]:
    db = await open_database(folder / f"queue-{size}.sqlite3")
    limits = Limits(max_queue=size + repeats + 10, max_queued_per_user=size, cooldown_seconds=0)
    # One local worker that is never started: jobs are admitted and wait, none is dispatched.
    service = GenerationService(db, [WorkerConfig("cpu")], limits)
    checkpoint = checkpoint_ref()
    counter = 0

    def spec(user: str):
        nonlocal counter
        counter += 1
        request = GenerationRequest.of(prompt=f"job {counter}", requester_id=user, steps=4, seed=counter)
        return validate(request, checkpoint, limits)

    handles = [await service.admit(spec(f"user{i % USERS}")) for i in range(size)]

    def queued_events() -> int:  # announcements waiting in the handles (nobody reads them here)
        return sum(h._events.qsize() for h in handles)

    admit_s, cancel_s, stalls, admit_events, cancel_events = [], [], [], [], []
    dispatch_s: list[float] = []
    dispatch_events: list[int] = []
    reads_s: list[float] = []
    for r in range(repeats):
        before = queued_events()
        started = time.perf_counter()
        extra, stall = await stall_while(service.admit(spec(f"user{r % USERS}")))
        admit_s.append(time.perf_counter() - started)
        admit_events.append(queued_events() - before)
        stalls.append(stall)
        handles.append(extra)
        first = service._queue.peek()
        before = queued_events()
        started = time.perf_counter()
        _, stall = await stall_while(service.cancel(first.id))
        cancel_s.append(time.perf_counter() - started)
        cancel_events.append(queued_events() - before)
        stalls.append(stall)
        # A dispatch, as the service makes one when a worker is free: the head leaves and its user
        # goes to the back of the rotation (the service's own step; the places are read when asked).
        before = queued_events()
        started = time.perf_counter()
        service._queue.pop_batch(service.limits.max_batch_images)
        dispatch_s.append(time.perf_counter() - started)
        dispatch_events.append(queued_events() - before)
        # Every waiting job's front end reads its place once after that change.
        waiting = [h for h in handles if h.job.id in service._queue]
        started = time.perf_counter()
        for handle in waiting:
            handle.queued()
        reads_s.append(time.perf_counter() - started)
    await service.flush()  # the job records the events wrote, before the database closes
    await db.close()
    return {
        "admit_seconds": spread(admit_s, 5),
        "admit_announcements": statistics.median(admit_events),
        "cancel_first_seconds": spread(cancel_s, 5),
        "cancel_first_announcements": statistics.median(cancel_events),
        "dispatch_seconds": spread(dispatch_s, 5),
        "dispatch_announcements": statistics.median(dispatch_events),
        "every_place_read_once_seconds": spread(reads_s, 5),
        "event_loop_stall_ms": round(max(stalls) * 1000, 2),
    }


async def main_async(sizes: list[int], repeats: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        return {str(size): await measure(size, repeats, Path(folder)) for size in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    figures = asyncio.run(main_async(sizes, args.repeats))
    small = figures[str(sizes[0])]["dispatch_seconds"]["median"]
    ratios = {size: round(figures[str(size)]["dispatch_seconds"]["median"] / small, 1) for size in map(str, sizes)}
    report("queue_scale", {"users": USERS, "by_queued_jobs": figures, "dispatch_ratio_to_smallest": ratios})


if __name__ == "__main__":
    main()
