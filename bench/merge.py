"""Merge two full-size checkpoints (SD1.5 layout, random fp16, ~2.1 GB each): peak RSS of the merge
process vs the size of one input (target ≤ 0.25×), and merge throughput vs reading both inputs raw.
A warm-up read puts both inputs in the page cache (so both cases read from memory), then REPEATS
rounds (default 5) each read them raw and merge them, interleaved; medians and spread.

python bench/merge.py [REPEATS]   (writes bench/results/merge-DATE.json)
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

from bench.harness import median, report, spread
from bench.load_single_file import write_full_size_sd1
from bot.checkpoints.merging import MergeRequest, MergeService
from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database


def read_raw(paths: list[Path]) -> int:
    total = 0
    buffer = bytearray(8 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    return total


async def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        inputs = [models / "a.safetensors", models / "b.safetensors"]
        for path in inputs:
            write_full_size_sd1(path)
        db = await open_database(Path(tmp) / "easel.sqlite3")
        registry = CheckpointRegistry(db, models)
        for path in inputs:
            await registry.hashes(path)  # hash outside the timed merge, as a registered model would be
        raw_bytes = read_raw(inputs)  # warm-up: both inputs in the page cache
        raw_times, merge_times, peaks = [], [], []
        service = MergeService(registry)
        for number in range(repeats):
            started = time.perf_counter()
            read_raw(inputs)
            raw_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            entry = await service.merge(
                MergeRequest(str(inputs[0]), "weighted_sum", 0.5, secondary=str(inputs[1]), name=f"merged-{number}")
            )
            merge_times.append(time.perf_counter() - started)
            # The merge process's own VmHWM: getrusage's maxrss for children would also count this
            # process's pages, which a forked child shares until it execs.
            peaks.append(service.last_peak_rss or 0)
            await asyncio.to_thread(Path(entry.path).unlink)  # the next round writes its own
        input_size = inputs[0].stat().st_size
        await db.close()
    raw_seconds, merge_seconds, peak = median(raw_times), median(merge_times), max(peaks)
    report(
        "merge",
        {
            "input_bytes_each": input_size,
            "output_bytes": entry.file_size,
            "merge_process_peak_rss_bytes": peak,
            "ratio_peak_rss_vs_one_input": round(peak / input_size, 3),
            "raw_read_mb_per_s": round(raw_bytes / raw_seconds / 1e6, 1),
            "merge_input_mb_per_s": round(raw_bytes / merge_seconds / 1e6, 1),
            "ratio_merge_vs_raw_read_throughput": round(raw_seconds / merge_seconds, 3),
            "merge_seconds_including_registration": round(merge_seconds, 2),
            "repeats": repeats,
            "raw_read_seconds": spread(raw_times),
            "merge_seconds": spread(merge_times),
            "merge_process_peak_rss_bytes_each": peaks,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
