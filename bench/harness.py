"""Shared helpers for benchmark scripts: interleaved timing, printing, and JSON results."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def time_interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Run each case `repeats` times, alternating between cases so machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], digits: int = 3) -> dict[str, object]:
    """A case's samples as the JSON keeps them: median, the lowest and highest, and how many."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def drop_from_page_cache(*paths: Path) -> None:
    """The files' pages out of the kernel's page cache (posix_fadvise DONTNEED, no root needed): the
    next read of them comes from the disk, as after a reboot."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def machine() -> dict[str, object]:
    """What ran it: figures from two machines are not compared."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "system": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
    }


def report(name: str, figures: dict[str, object]) -> Path:
    """Print figures and write them, dated, to bench/results/NAME-YYYY-MM-DD.json (NAME-DATE-2.json
    and on for later runs that day), committed when a figure in the README or docs/ rests on them:
    each such figure names its file."""
    RESULTS.mkdir(exist_ok=True)
    day = datetime.date.today().isoformat()
    payload = {"benchmark": name, "date": day, "machine": machine(), **figures}
    out, run = RESULTS / f"{name}-{day}.json", 2
    while out.exists():  # a second run that day is a file of its own: a committed result is never overwritten
        out, run = RESULTS / f"{name}-{day}-{run}.json", run + 1
    out.write_text(json.dumps(payload, indent=2) + "\n")
    for key, value in figures.items():
        print(f"{key:>40}: {value}")
    print(f"{'written':>40}: {out}")
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def tiny_checkpoint(folder: Path, arch: str = "sd1", seed: int = 0) -> Path:
    """Make a tiny checkpoint in a subprocess, so the calling process need not import torch."""
    import subprocess

    out = folder / f"tiny-{arch}-{seed}.safetensors"
    subprocess.run(
        [sys.executable, "-m", "gpu_worker", "make-tiny-checkpoint", "--arch", arch, "--seed", str(seed), str(out)],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return out


async def start_service(folder: Path, limits=None, preview_every: int = 0, device: str = "cpu"):
    """A GenerationService with one worker, its database in `folder`."""
    from bot.db import open_database
    from bot.generation.service import GenerationService
    from common.worker_config import WorkerConfig

    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    db = await open_database(folder / "bench.sqlite3")
    service = GenerationService(db, [WorkerConfig(device, log_level="WARNING")], limits, preview_every=preview_every)
    await service.start()
    return service, db


async def checkpoint_ref(db, path: Path):
    from bot.checkpoints.registry import CheckpointRegistry
    from bot.generation.checkpoint_ref import resolve_checkpoint

    return await resolve_checkpoint(CheckpointRegistry(db, path.parent), str(path), allow_path=True)
