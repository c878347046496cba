"""The hires fix's cost against its two passes run apart, through the worker's batch runner.

One hires job (pass one at SIZE, latent ×2, pass two at 2×SIZE) against a txt2img job at SIZE plus an
img2img job at 2×SIZE with the same steps and strength, in interleaved rounds on a full-size SD1.5
layout (random fp16 weights). Goal: overhead ≤ 1.05× (the upscale step and the second conditioning
should cost next to nothing beside two samplers).
python bench/hires_fix.py [SIZE] [STEPS] [ROUNDS]   (default 256, 4, 3; writes bench/results/hires_fix-DATE.json)
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from PIL import Image

from bench.harness import median, report
from bench.load_single_file import write_full_size_sd1
from common.protocol import JobDone, JobPart, LoadRequest, RunBatch
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline
from gpu_worker.runner import BatchRunner


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    denoise = 0.5
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sd15.safetensors"
        write_full_size_sd1(path)
        load = LoadRequest(str(path), "sd15", "sd1", "SD1.x", "safetensors", "sd1", "epsilon", "d" * 64)
        cache = PipelineCache(device, 1 << 40, 0, lambda r: load_pipeline(r, device))
        done: list[JobDone] = []
        runner = BatchRunner(device, cache, lambda e: done.append(e) if isinstance(e, JobDone) else None, lambda _: False)
        picture = io.BytesIO()
        Image.new("RGB", (size * 2, size * 2), (120, 90, 60)).save(picture, format="PNG")

        def batch(**values) -> RunBatch:
            base = {
                "batch_id": "b", "load": load, "jobs": (JobPart("j", "a lighthouse", "", (1,)),),
                "width": size, "height": size, "steps": steps, "cfg": 7.0, "sampler": "Euler", "schedule": "Automatic",
            }  # fmt: skip
            return RunBatch.of(**(base | values))

        cases = {
            "hires": batch(hires_scale=2.0, hires_denoise=denoise),
            "pass_one": batch(),
            "pass_two": batch(width=size * 2, height=size * 2, init_png=picture.getvalue(), strength=denoise),
        }
        runner.run(cases["pass_one"])  # load and warm up
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, job in cases.items():
                started = time.perf_counter()
                runner.run(job)
                times[name].append(time.perf_counter() - started)
    hires, apart = median(times["hires"]), median(times["pass_one"]) + median(times["pass_two"])
    report(
        "hires_fix",
        {
            "device": device,
            "job": f"{size}² → {size * 2}², {steps} steps, hires denoise {denoise}",
            "hires_s": round(hires, 3),
            "pass_one_s": round(median(times["pass_one"]), 3),
            "pass_two_s": round(median(times["pass_two"]), 3),
            "ratio_hires_vs_passes_apart": round(hires / apart, 3),
        },
    )


if __name__ == "__main__":
    main()
