"""Shared helpers for benchmark scripts: interleaved timing, printing, and JSON results."""

from __future__ import annotations

import json
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


def report(name: str, figures: dict[str, object]) -> Path:
    """Print figures and write them to bench/results/NAME.json."""
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "python": sys.version.split()[0], "machine": platform.machine(), **figures}
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    for key, value in figures.items():
        print(f"{key:>40}: {value}")
    print(f"{'written':>40}: {out}")
    return out
