"""Peak memory of a tiled 4x upscale against an untiled one, each in a fresh process.

A 4x upscale of a SIZE² picture (default 1024) by an RRDB network of FILTERS filters (default 32,
one block: the layer widths that set activation memory, without the 23 blocks' compute), once in
A1111's 192-pixel tiles with 8 pixels of overlap, once in one piece. Each run is a child process
that reports its peak RSS; a third child only loads the network and the picture, and its peak is
subtracted from both, leaving what the upscale itself needs. Goal: the tiled upscale's extra memory
is a small fraction of the untiled one's, and near the 8-bit output it must hold anyway. ROUNDS
rounds (default 5), the three children interleaved in each; medians and spread.
python bench/upscale_tiling.py [SIZE] [FILTERS] [ROUNDS]   (writes bench/results/upscale_tiling-DATE.json)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(mode: str, model: str, size: int) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from gpu_worker.upscale_models import TILE, enlarge, load_upscaler

    torch.set_num_threads(2)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    upscaler = load_upscaler(Path(model), device)
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels, "RGB")
    started = time.perf_counter()
    if mode != "baseline":
        out = enlarge(upscaler, picture, tile=TILE if mode == "tiled" else 0)
        assert out.size == (size * 4, size * 4)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    gpu = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    print(json.dumps({"peak_rss": peak, "peak_gpu": gpu, "seconds": seconds}))


def make_model(path: Path, filters: int) -> None:
    import torch

    from gpu_worker.testing.tiny_upscalers import tiny_kind
    from gpu_worker.upscaler_nets import build_network

    network = build_network(tiny_kind("realesrgan", 4, filters=filters, blocks=1))
    torch.save({"params_ema": network.state_dict()}, path)


def main() -> None:
    from bench.harness import median, report, spread

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    filters = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    samples: dict[str, list[dict]] = {"baseline": [], "tiled": [], "whole": []}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "4x.pth"
        make_model(model, filters)
        for _ in range(rounds):
            for mode in samples:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", mode, str(model), str(size)],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                )
                if done.returncode != 0:
                    failed[mode] = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else str(done.returncode)
                    continue
                samples[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = median([run["peak_rss"] for run in samples["baseline"]])
    figures: dict[str, object] = {"size": size, "filters": filters, "rounds": rounds, "output_bytes": (size * 4) ** 2 * 3}
    for mode in ("tiled", "whole"):
        if mode in failed or not samples[mode]:
            figures[f"{mode}_failed"] = failed.get(mode, "no run")
            continue
        extra = [(run["peak_rss"] - base) / 1e6 for run in samples[mode]]
        seconds = [run["seconds"] for run in samples[mode]]
        figures[f"{mode}_extra_rss_mb"] = round(median(extra), 1)
        figures[f"{mode}_seconds"] = round(median(seconds), 2)
        figures[f"{mode}_extra_rss_mb_spread"] = spread(extra, 1)
        figures[f"{mode}_seconds_spread"] = spread(seconds, 2)
        if samples[mode][0]["peak_gpu"]:
            figures[f"{mode}_peak_gpu_mb"] = round(median([run["peak_gpu"] for run in samples[mode]]) / 1e6, 1)
    if "tiled_extra_rss_mb" in figures and "whole_extra_rss_mb" in figures:
        figures["tiled_vs_whole_extra_memory"] = round(figures["tiled_extra_rss_mb"] / figures["whole_extra_rss_mb"], 3)
        figures["tiled_vs_whole_time"] = round(figures["tiled_seconds"] / figures["whole_seconds"], 2)
    report("upscale_tiling", figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
