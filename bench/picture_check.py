"""The picture check's cost against the job it checks, through the worker's batch runner.

One 20-step job (Euler, a full-size SD1.5 layout with random fp16 weights, at SIZE²) and the
picture check (gpu_worker/safety.py, NudeNet's ONNX detector on the CPU) on a 1024² picture, in
interleaved rounds; the check is also part of the job's own time (it runs on every result). Goal
(the issue's): check time ≤ 0.05 × the job's on a GPU; on a CPU the ratio is only smaller, as
generation is slower there while the check stays on the CPU either way.
python bench/picture_check.py [SIZE] [STEPS] [ROUNDS]   (default 512, 20, 2; writes bench/results/picture_check-DATE.json)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image

from bench.harness import median, report, spread
from bench.load_single_file import write_full_size_sd1
from common.protocol import JobPart, LoadRequest, RunBatch
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline
from gpu_worker.runner import BatchRunner
from gpu_worker.safety import NudityScorer


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    scorer = NudityScorer()
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    scorer.score(picture)  # load the detector
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sd15.safetensors"
        write_full_size_sd1(path)
        load = LoadRequest(str(path), "sd15", "sd1", "SD1.x", "safetensors", "sd1", "epsilon", "d" * 64)
        cache = PipelineCache(device, 1 << 40, 0, lambda r: load_pipeline(r, device))
        runner = BatchRunner(device, cache, lambda e: None, lambda _: False)
        job = RunBatch.of("b", load, (JobPart("j", "a lighthouse", "", (1,)),), size, size, steps, 7.0, "Euler", "Automatic")
        runner.run(RunBatch.of("w", load, job.jobs, size, size, 1, 7.0, "Euler", "Automatic"))  # load and warm up
        job_times, check_times = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            runner.run(job)
            job_times.append(time.perf_counter() - started)
            for _ in range(10):
                started = time.perf_counter()
                scorer.score(picture)
                check_times.append(time.perf_counter() - started)
    check, generation = median(check_times), median(job_times)
    report(
        "picture_check",
        {
            "device": device,
            "job": f"{size}², {steps} steps, Euler, SD1.5 layout",
            "job_s": round(generation, 3),
            "check_1024_s": round(check, 4),
            "ratio_check_vs_job": round(check / generation, 4),
            "rounds": rounds,
            "job_s_spread": spread(job_times),
            "check_1024_s_spread": spread(check_times, 4),
        },
    )


if __name__ == "__main__":
    main()
