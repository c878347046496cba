"""The scheduler's rule for workers that fetch (bot/generation/service.py `_choose`), measured: a job
whose only holder is busy goes to an idle worker that fetches its checkpoint, rather than waiting.

Real redis-server on loopback, two real remote workers on this machine: H holds every checkpoint,
F starts with an empty folder and --fetch-missing; the bot shares its files (aiohttp on loopback).
Each repeat, interleaved: a long job runs on H (both idle: the holder gets it, by the rule), then a
second job for the same checkpoint is queued and timed from queued to finished —
- `wait`: the scheduler not allowed to fetch (its share switched off: the rule before fetching
  workers), so the job waits for H;
- `fetch`: the rule as it is, so F fetches the checkpoint, loads it and draws.
Each case takes a checkpoint F has never had (copies of the tiny SD1 with their own metadata, so
their own hashes). The long job is the same in both. The figure depends on what the holder is busy
with and on the fetch's size and link; it shows what the rule trades: a fetch and a load against a
wait.

    python bench/fetch_rule.py [--repeats 3] [--long-steps 150]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import checkpoint_ref, median, report, spread, tiny_checkpoint
from bench.remote_workers import joined, start_redis, stop
from bot.db import open_database
from bot.generation.jobs import Finished, Progress
from bot.generation.model_share import ModelShare, ShareOptions
from bot.generation.service import GenerationService
from bot.rules.limits import GenerationRequest, Limits
from tests.helpers import queue_unchecked, with_metadata

REPO = Path(__file__).resolve().parent.parent


def start_worker(url: str, models: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gpu_worker", "remote", "--broker", url, "--models-dir", str(models),
             "--devices", "cpu", "--log-level", "INFO", *extra],
            cwd=REPO, stdout=out, stderr=out,
        )  # fmt: skip


async def until_idle(service: GenerationService) -> None:
    """Every worker has said its last batch finished (a job's Finished comes before that)."""
    deadline = time.monotonic() + 60
    while any(w.state != "idle" for w in service.status().workers):
        if time.monotonic() > deadline:
            raise RuntimeError("the workers were not idle within 60 s")
        await asyncio.sleep(0.02)


async def timed_behind_a_long_job(service: GenerationService, checkpoint, name: str, long_steps: int) -> tuple[float, str]:
    """The second job's seconds from queued to finished, and where it ran."""
    await until_idle(service)
    request = GenerationRequest.of(prompt="a harbour", requester_id=f"{name}-long", steps=long_steps, seed=1, width=128, height=128)
    long = await queue_unchecked(service, request, checkpoint)
    async for event in long.events():
        if isinstance(event, Progress):
            break
    started = time.perf_counter()
    second = await queue_unchecked(service, GenerationRequest.of(prompt="a fox", requester_id=name, steps=8, seed=2), checkpoint)
    events = [event async for event in second.events()]
    if not isinstance(events[-1], Finished):
        raise RuntimeError(f"job {second.job.id} did not finish: {events[-1]}")
    seconds = time.perf_counter() - started
    async for _ in long.events():  # the holder free again before the next case
        pass
    return seconds, second.job.device


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-steps", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        holder_folder, fetcher_folder = tmp / "holder", tmp / "fetcher"
        holder_folder.mkdir()
        fetcher_folder.mkdir()
        base = await asyncio.to_thread(tiny_checkpoint, tmp)
        checkpoint_mb = round(base.stat().st_size / 1e6, 1)
        variants = [with_metadata(base, holder_folder / f"v{i}.safetensors", {"variant": str(i)}) for i in range(2 * args.repeats + 1)]
        redis, url = start_redis(tmp)
        workers: list[subprocess.Popen[bytes]] = []
        db = await open_database(tmp / "bot.sqlite3")
        service = GenerationService(
            db, [], Limits(max_queued_per_user=10, max_batch_images=1), preview_every=0, broker_url=url,
            share=ShareOptions(serve=True, host="127.0.0.1", port=0),
        )  # fmt: skip
        try:
            workers.append(start_worker(url, holder_folder, tmp / "holder.log"))
            workers.append(start_worker(url, fetcher_folder, tmp / "fetcher.log", "--fetch-missing"))
            await service.start(ready_within=120)
            await joined(service, 2)
            refs = [await checkpoint_ref(db, path) for path in variants]
            await timed_behind_a_long_job(service, refs[-1], "warm", 20)  # both processes past their first batch
            share: ModelShare | None = service._share
            ids = {w.pid: w.worker_id for w in service.status().workers}
            holder, fetcher = ids[workers[0].pid], ids[workers[1].pid]
            times: dict[str, list[float]] = {"wait": [], "fetch": []}
            ran_on: dict[str, list[str]] = {"wait": [], "fetch": []}
            for i in range(args.repeats):
                for case, ref in (("wait", refs[2 * i]), ("fetch", refs[2 * i + 1])):
                    service._share = share if case == "fetch" else None  # the rule with and without fetching
                    seconds, device = await timed_behind_a_long_job(service, ref, f"{case}{i}", args.long_steps)
                    times[case].append(seconds)
                    ran_on[case].append("holder" if holder in device else "fetcher" if fetcher in device else device)
            service._share = share
            fetched = sorted(p.name for p in (fetcher_folder / "fetched").glob("*.safetensors"))
        finally:
            await service.close()
            await db.close()
            stop(workers)
            stop([redis])
            shutil.rmtree(tmp, ignore_errors=True)
    report(
        "fetch_rule",
        {
            "repeats": args.repeats,
            "long_job_steps": args.long_steps,
            "checkpoint_mb": checkpoint_mb,
            "wait_for_the_busy_holder_s": spread(times["wait"], 2),
            "fetch_on_the_idle_worker_s": spread(times["fetch"], 2),
            "ratio_fetch_over_wait": round(median(times["fetch"]) / median(times["wait"]), 3),
            "files_fetched": len(fetched),
            "second_job_ran_on": ran_on,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
