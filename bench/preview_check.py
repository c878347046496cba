"""What checking every progress preview costs: the same job with previews checked by the picture
check (what the worker does: on a thread of its own, beside the denoising), with previews sent
unchecked (what it did before), and without previews.

Two models, each in interleaved rounds through the worker's batch runner, a preview every 5 steps
(the bot's default), the final picture checked in every case:
- `tiny`: the tests' tiny SD1 layout at 256², 60 steps: short steps (~0.1 s here), many previews;
- `sd15`: a full-size SD1.5 layout (random fp16 weights) at SIZE², a CPU's own real case.
The check itself (NudeNet's ONNX detector on the CPU) costs about the same on any machine.
python bench/preview_check.py [SIZE] [STEPS] [ROUNDS]   (default 256, 20, 3; writes bench/results/preview_check-DATE.json)
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

from bench.harness import median, report, tiny_checkpoint
from bench.load_single_file import write_full_size_sd1
from common.protocol import JobPart, JobPreview, LoadRequest, RunBatch
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline
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


def run_cases(runner: BatchRunner, scorer: TimedScorer, load: LoadRequest, size: int, steps: int, rounds: int) -> dict:
    jobs = (JobPart("j", "a lighthouse", "", (1,)),)

    def batch(every: int, n: int = steps) -> RunBatch:
        return RunBatch.of("b", load, jobs, size, size, n, 7.0, "Euler", "Automatic", preview_every=every)

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
    return {
        "job_s (checked / unchecked / no previews)": f"{checked:.3f} / {unchecked:.3f} / {none:.3f}",
        "ratio_checked_vs_unchecked": round(checked / unchecked, 4),
        "ratio_checked_vs_no_previews": round(checked / none, 4),
        "check_ms_per_preview": round(median(scorer.preview_seconds) * 1000, 1),
        "step_ms": round(none / steps * 1000, 1),
    }


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    figures: dict[str, object] = {"device": device, "preview_every": PREVIEW_EVERY}
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "sd15.safetensors"
        write_full_size_sd1(full)
        models = {
            "tiny": (
                LoadRequest(str(tiny_checkpoint(Path(tmp), "sd1")), "tiny", "sd1", "SD1.x", "safetensors", "tiny-sd1", "epsilon", "t" * 64),
                256,
                60,
            ),
            "sd15": (LoadRequest(str(full), "sd15", "sd1", "SD1.x", "safetensors", "sd1", "epsilon", "d" * 64), size, steps),
        }
        for name, (load, side, count) in models.items():
            previews: list[JobPreview] = []
            cache = PipelineCache(device, 1 << 40, 0, lambda r: load_pipeline(r, device))
            runner = BatchRunner(device, cache, lambda e, p=previews: p.append(e) if isinstance(e, JobPreview) else None, lambda _: False)
            scorer = TimedScorer(side)
            runner.safety = scorer
            found = run_cases(runner, scorer, load, side, count, rounds)
            preview = Image.open(io.BytesIO(previews[-1].png)).size
            figures |= {f"{name} · job": f"{side}², {count} steps, Euler", f"{name} · preview": f"{preview[0]}x{preview[1]}"}
            figures |= {f"{name} · {key}": value for key, value in found.items()}
    report("preview_check", figures)


if __name__ == "__main__":
    main()
