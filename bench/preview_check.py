"""What checking every progress preview costs: the same job with previews scored by the picture
check (what the worker does), with previews sent unscored (what it did before), and without previews.

One 20-step job (Euler, a full-size SD1.5 layout with random fp16 weights, at SIZE²), a preview every
5 steps (the bot's default), in interleaved rounds through the worker's batch runner; the final
picture is scored in every case. The check (NudeNet's ONNX detector on the CPU) costs about the same
on any machine, while a GPU's steps are far shorter than a CPU's: so the figure to read for a GPU is
`check_ms_per_preview` against 5 × a GPU step (SD1.5 at 512² on a consumer card: ~30-60 ms a step).
python bench/preview_check.py [SIZE] [STEPS] [ROUNDS]   (default 512, 20, 3; writes bench/results/preview_check.json)
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

from bench.common import median, report
from bench.load_single_file import write_full_size_sd1
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline
from gpu_worker.protocol import JobPart, JobPreview, LoadRequest, RunBatch
from gpu_worker.runner import BatchRunner
from gpu_worker.safety import NudityScorer, Scores

PREVIEW_EVERY = 5


class TimedScorer(NudityScorer):
    """The real check, timing the calls on previews (pictures smaller than the job's) apart; with
    `previews=False` previews are passed unscored, as before the check covered them."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size, self.previews, self.preview_seconds = size, True, []

    def score(self, picture: Image.Image) -> Scores:
        if picture.width >= self.size:
            return super().score(picture)
        if not self.previews:
            return Scores(0.0)
        started = time.perf_counter()
        scores = super().score(picture)
        self.preview_seconds.append(time.perf_counter() - started)
        return scores


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    previews: list[JobPreview] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sd15.safetensors"
        write_full_size_sd1(path)
        load = LoadRequest(str(path), "sd15", "sd1", "SD1.x", "safetensors", "sd1", "epsilon", "d" * 64)
        cache = PipelineCache(device, 1 << 40, 0, lambda r: load_pipeline(r, device))
        runner = BatchRunner(device, cache, lambda e: previews.append(e) if isinstance(e, JobPreview) else None, lambda _: False)
        scorer = TimedScorer(size)
        runner.safety = scorer
        jobs = (JobPart("j", "a lighthouse", "", (1,)),)

        def batch(every: int, n: int = steps) -> RunBatch:
            return RunBatch("b", load, jobs, size, size, n, 7.0, "Euler", "Automatic", preview_every=every)

        runner.run(batch(1, 2))  # load, warm up, and load the detector
        scorer.preview_seconds.clear()
        times: dict[str, list[float]] = {"checked previews": [], "unchecked previews": [], "no previews": []}
        for _ in range(rounds):
            for case in times:
                scorer.previews = case == "checked previews"
                started = time.perf_counter()
                runner.run(batch(0 if case == "no previews" else PREVIEW_EVERY))
                times[case].append(time.perf_counter() - started)
    checked, unchecked, none = (median(times[c]) for c in times)
    per_preview = median(scorer.preview_seconds)
    report(
        "preview_check",
        {
            "device": device,
            "job": f"{size}², {steps} steps, Euler, SD1.5 layout, a preview every {PREVIEW_EVERY} steps",
            "preview_size": "x".join(map(str, Image.open(io.BytesIO(previews[-1].png)).size)),
            "job_s (checked / unchecked / no previews)": f"{checked:.3f} / {unchecked:.3f} / {none:.3f}",
            "ratio_checked_vs_unchecked": round(checked / unchecked, 4),
            "ratio_checked_vs_no_previews": round(checked / none, 4),
            "check_ms_per_preview": round(per_preview * 1000, 1),
            "overhead_on_a_gpu_at_40ms_a_step": round(per_preview / (PREVIEW_EVERY * 0.040), 4),
        },
    )


if __name__ == "__main__":
    main()
