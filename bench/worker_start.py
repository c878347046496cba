"""How long a worker takes from being asked for to its first picture: started afresh (`python -m
gpu_worker serve`, paying torch's, diffusers' and transformers' imports) against forked by the
preloader (bot/preloaded.py), which imported them once. The demo model, one 64 px picture, 4 steps;
5 interleaved rounds after a warm-up of each. Wall seconds, and the child's own CPU seconds (its
/proc entry, read as it ends); and how long it takes to end once told to (a forked child leaves
without Python's finalisation: gpu_worker/__main__.py).
python bench/worker_start.py   (writes bench/results/worker_start-DATE.json)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import report, spread
from bot import preloaded
from bot.child_process import ChildProcess
from bot.demo import DEMO_FILE
from common.protocol import (
    BatchFailed,
    BatchFinished,
    JobPart,
    LoadRequest,
    RunBatch,
    Shutdown,
    WorkerReady,
    decode,
    encode,
)
from common.worker_config import WorkerConfig

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def first_picture(forked: bool) -> tuple[float, float, float]:
    os.environ[preloaded.SWITCH] = "true" if forked else "false"
    loop = asyncio.get_running_loop()
    ready, done, ended = asyncio.Event(), loop.create_future(), loop.create_future()

    def on_frame(frame: bytes) -> None:
        event = decode(frame)
        if isinstance(event, WorkerReady):
            ready.set()
        elif isinstance(event, BatchFinished | BatchFailed) and not done.done():
            done.set_result(event)

    started = time.perf_counter()
    child = ChildProcess("bench worker", ["serve", "--config", json.dumps(asdict(WorkerConfig("cpu", log_level="WARNING")))],
                         on_frame=on_frame, on_exit=lambda code: ended.done() or ended.set_result(code))  # fmt: skip
    child.start()
    assert child.pid is not None
    await ready.wait()
    load = LoadRequest(str(DEMO_FILE), "demo", "sd1", "SD1.x", "safetensors", "demo-sd1", "epsilon", "demo")
    child.send(encode(RunBatch.of("b", load, (JobPart("j", "a red circle on a blue background", "", (1,)),), 64, 64, 4)))
    outcome = await done
    assert isinstance(outcome, BatchFinished), outcome
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(child.pid)
    stopping = time.perf_counter()
    child.send(encode(Shutdown()))
    await ended
    return seconds, cpu, time.perf_counter() - stopping


async def main() -> None:
    preloaded.warm_up()
    assert preloaded._preloader is not None and await asyncio.to_thread(preloaded._preloader.wait_ready, 120)
    results: dict[str, list[tuple[float, float, float]]] = {"afresh": [], "forked": []}
    for case in results:  # warm-up: the page cache, the preloader's first fork
        await first_picture(case == "forked")
    for _ in range(5):
        for case in results:
            results[case].append(await first_picture(case == "forked"))
    wall = {case: spread([w for w, _, _ in runs]) for case, runs in results.items()}
    cpu = {case: spread([c for _, c, _ in runs]) for case, runs in results.items()}
    stop = {case: spread([s for _, _, s in runs]) for case, runs in results.items()}
    report(
        "worker_start",
        {
            "wall_seconds_to_first_picture": wall,
            "child_cpu_seconds": cpu,
            "forked_over_afresh_wall": round(wall["forked"]["median"] / wall["afresh"]["median"], 3),
            "forked_over_afresh_cpu": round(cpu["forked"]["median"] / cpu["afresh"]["median"], 3),
            "wall_seconds_to_stop": stop,
            "forked_over_afresh_stop": round(stop["forked"]["median"] / stop["afresh"]["median"], 3),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
