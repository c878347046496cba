"""Remote workers through Redis Streams, against the bot's own worker on a pipe, on this machine.

Three figures, each measured in the same run (real redis-server on loopback, real worker processes,
the real generation service, a tiny SD1 checkpoint):

1. dispatch overhead: the same ~2 s job (submit -> Finished) through a remote worker and through a
   local pipe worker, interleaved; the median ratio remote/local. Goal <= 1.05.
2. throughput: JOBS jobs from different users through 1 remote worker, then through 2; jobs per
   second and the ratio. Here both workers share this machine's CPU cores: with torch's default
   threads each (as many as there are cores) they oversubscribe the cores and are slower together
   than one alone; with OMP_NUM_THREADS=1 each (two workers, two cores) the pair is measured as
   well. The cores bound it, not the broker; on GPU machines each worker has its own GPU.
3. failover: a job running on one of two remote workers, that worker killed with SIGKILL; seconds
   from the kill until the job runs again on the other, and until it is done. Goal <= 10 s.

python bench/remote_workers.py [REPEATS]   (default 5; bench/results/remote_workers-DATE.json)
Needs Debian's redis-server (./dev test installs it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import checkpoint_ref, median, report, start_service, tiny_checkpoint
from bot.db import open_database
from bot.generation.jobs import Finished, Progress, Started
from bot.generation.service import GenerationService
from bot.rules.limits import GenerationRequest, Limits
from tests.helpers import queue_unchecked

REPO = Path(__file__).resolve().parent.parent
STEPS = 140  # about 2 s of the tiny SD1 at 64×64 on one of these CPUs
JOBS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server is not installed (Debian's redis-server package; ./dev test installs it)")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_worker(url: str, models: Path, log: Path, threads: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gpu_worker", "remote", "--broker", url, "--models-dir", str(models),
             "--devices", "cpu", "--log-level", "WARNING"],
            cwd=REPO, stdout=out, stderr=out, env=env,
        )  # fmt: skip


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(10)


async def joined(service: GenerationService, count: int) -> None:
    deadline = time.monotonic() + 120
    while sum(1 for w in service.status().workers if w.worker_id) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} remote workers did not join within 120 s")
        await asyncio.sleep(0.05)


async def until_gone(service: GenerationService) -> None:
    deadline = time.monotonic() + 30
    while any(w.worker_id for w in service.status().workers):
        if time.monotonic() > deadline:
            raise RuntimeError("stopped workers still counted after 30 s")
        await asyncio.sleep(0.1)


async def run_job(service: GenerationService, checkpoint, user: str, steps: int = STEPS) -> float:
    started = time.perf_counter()
    handle = await queue_unchecked(
        service, GenerationRequest.of(prompt="a harbour", requester_id=user, steps=steps, seed=1), checkpoint
    )
    events = [event async for event in handle.events()]
    if not isinstance(events[-1], Finished):
        raise RuntimeError(f"job {handle.job.id} did not finish: {events[-1]}")
    return time.perf_counter() - started


async def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        path = await asyncio.to_thread(tiny_checkpoint, models)
        redis, url = start_redis(tmp)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            local, local_db = await start_service(tmp / "local", Limits(max_queued_per_user=JOBS))
            remote_db = await open_database(tmp / "remote.sqlite3")
            remote = GenerationService(
                remote_db,
                [],
                Limits(max_queued_per_user=JOBS, max_batch_images=1),
                preview_every=0,  # as the local service: no previews on either side
                broker_url=url,
            )
            workers.append(start_worker(url, models, tmp / "worker-1.log"))
            await remote.start(ready_within=120)
            checkpoint = await checkpoint_ref(remote_db, path)
            local_checkpoint = await checkpoint_ref(local_db, path)
            # Warm both (the first job loads the pipeline), then interleave.
            await run_job(local, local_checkpoint, "warm")
            await run_job(remote, checkpoint, "warm")
            local_times, remote_times = [], []
            for i in range(repeats):
                local_times.append(await run_job(local, local_checkpoint, f"l{i}"))
                remote_times.append(await run_job(remote, checkpoint, f"r{i}"))
            await local.close()
            await local_db.close()

            async def throughput() -> float:
                started = time.perf_counter()
                await asyncio.gather(*(run_job(remote, checkpoint, f"t{i}", steps=STEPS // 2) for i in range(JOBS)))
                return JOBS / (time.perf_counter() - started)

            async def warm_pair() -> None:  # each worker's pipeline loaded, as the first one's was
                await asyncio.gather(run_job(remote, checkpoint, "warm3"), run_job(remote, checkpoint, "warm4"))

            one = await throughput()
            workers.append(start_worker(url, models, tmp / "worker-2.log"))
            await joined(remote, 2)
            await warm_pair()
            two = await throughput()
            stop(workers)
            workers.clear()
            await until_gone(remote)
            # One worker with one thread, then two with one each: the same threads per worker.
            workers.append(start_worker(url, models, tmp / "worker-single-0.log", threads=1))
            await joined(remote, 1)
            await run_job(remote, checkpoint, "warm5")
            one_single = await throughput()
            workers.append(start_worker(url, models, tmp / "worker-single-1.log", threads=1))
            await joined(remote, 2)
            await warm_pair()
            two_single = await throughput()

            failovers, dones = [], []
            for i in range(3):
                handle = await queue_unchecked(
                    remote,
                    GenerationRequest.of(
                        prompt="a fox", requester_id=f"f{i}", steps=120, width=128, height=128, seed=1
                    ),
                    checkpoint,
                )
                async for event in handle.events():
                    if isinstance(event, Progress):
                        break
                [running] = [w for w in remote.status().workers if handle.job.id in w.jobs]
                victim = next(p for p in workers if p.pid == running.pid)
                killed = time.perf_counter()
                os.kill(victim.pid, signal.SIGKILL)
                again = None
                async for event in handle.events():
                    if isinstance(event, Started) and again is None:
                        again = time.perf_counter() - killed
                failovers.append(again or float("nan"))
                dones.append(time.perf_counter() - killed)
                victim.wait()
                workers.remove(victim)
                workers.append(start_worker(url, models, tmp / f"worker-r{i}.log"))
                await joined(remote, 2)
            await remote.close()
            await remote_db.close()
        finally:
            stop(workers)
            stop([redis])
    ratio = median(remote_times) / median(local_times)
    report(
        "remote_workers",
        {
            "job_steps": STEPS,
            "repeats": repeats,
            "local_pipe_job_median_s": round(median(local_times), 3),
            "remote_job_median_s": round(median(remote_times), 3),
            "dispatch_ratio_remote_over_local": round(ratio, 3),
            "dispatch_goal": 1.05,
            "throughput_jobs": JOBS,
            "throughput_1_worker_jobs_per_s": round(one, 3),
            "throughput_2_workers_jobs_per_s": round(two, 3),
            "throughput_ratio_2_over_1": round(two / one, 3),
            "throughput_1_worker_1_thread_jobs_per_s": round(one_single, 3),
            "throughput_2_workers_1_thread_each_jobs_per_s": round(two_single, 3),
            # the same threads per worker: how the pair scales
            "throughput_ratio_2_over_1_at_1_thread_each": round(two_single / one_single, 3),
            # the same cores in all: two one-thread workers against one worker with torch's default threads
            "throughput_ratio_2_workers_1_thread_each_over_1_worker_default_threads": round(two_single / one, 3),
            "cpu_cores": os.cpu_count(),
            "failover_to_rerun_s": [round(x, 2) for x in failovers],
            "failover_to_done_s": [round(x, 2) for x in dones],
            "failover_goal_s": 10,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
