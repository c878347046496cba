"""Checkpoint switch cost through the worker's pipeline cache: already on the device, in the CPU-RAM
tier (GPU workers only), and cold from disk; each reported against the cold load.

Uses full-size SD1.5-layout checkpoints (random fp16 weights, ~2 GB each), so load times are real.
"Cold" is really cold: before every load from disk the file's pages are dropped from the page cache
(posix_fadvise DONTNEED after an fsync), so the read comes from the disk, not from memory.
python bench/checkpoint_switch.py   (writes bench/results/checkpoint_switch-DATE.json)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.harness import median, report
from bench.load_single_file import write_full_size_sd1
from common.protocol import LoadRequest
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages, so the next read goes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        requests = []
        for name in ("a", "b"):
            path = Path(tmp) / f"{name}.safetensors"
            write_full_size_sd1(path)
            requests.append(LoadRequest(str(path), name, "sd1", "SD1.x", "safetensors", "sd1", "epsilon", name * 64))
        a, b = requests
        one = 2_200_000_000  # just over one fp16 SD1.5 pipeline
        # Device room for one pipeline; CPU RAM room for one more (GPU workers only).
        cache = PipelineCache(device, one, one, lambda r: load_pipeline(r, device, torch.float16))
        times: dict[str, list[float]] = {"device": [], "cpu": [], "disk": []}
        for _ in range(3):
            for request in (a, b, a, a):  # b evicts a (to CPU RAM on a GPU); a returns; a again from the device
                if cache.where(request.cache_key) == "disk":
                    drop_page_cache(Path(request.path))
                started = time.perf_counter()
                _, source = cache.get(request)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[source].append(time.perf_counter() - started)
    cold = median(times["disk"])
    figures: dict[str, object] = {"device": device, "cold_from_disk_s": round(cold, 3)}
    for source in ("device", "cpu"):
        if times[source]:
            figures[f"{source}_cached_s"] = round(median(times[source]), 6)
            figures[f"ratio_{source}_cached_vs_cold"] = round(median(times[source]) / cold, 6)
        else:
            figures[f"{source}_cached_s"] = "n/a: a CPU worker has no second tier (RAM is its device)"
    report("checkpoint_switch", figures)


if __name__ == "__main__":
    main()
