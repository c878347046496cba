"""How often the demo model gets the colours of held-out prompts right, with guidance and without:
the wider measure behind tests/test_demo_model.py's 24-prompt check ("CFG matters").

N held-out prompts (colour pairs its training never showed, every caption form), the bot's defaults
(DPM++ 2M Karras, 20 steps), each drawn at CFG 7 and at CFG 1 through the worker's batch runner, four
to a pipeline call as the service batches them. Printed: the share of shapes and backgrounds whose
colour is right at each CFG, and the gap, with a 95 % interval for the gap (paired, normal approximation).
python bench/demo_guidance.py [N]   (default 96; writes bench/results/demo_guidance-DATE.json)
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from PIL import Image

from bench.harness import report
from bot.checkpoints.inspection import inspect_file
from bot.demo import DEMO_FILE
from bot.demo.world import caption, dominant_colours, sample
from common.protocol import JobDone, JobPart, LoadRequest, RunBatch
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline
from gpu_worker.runner import BatchRunner


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 96
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    recipe = json.loads(inspect_file(DEMO_FILE).metadata["other"]["easel.training"])
    held = [tuple(pair) for pair in recipe["held_out_colour_pairs"]]
    rng = random.Random(11)  # not the test's 7: prompts the test never used
    specs = [sample(rng, held) for _ in range(count)]
    load = LoadRequest(str(DEMO_FILE), "demo", "sd1", "SD1.x", "safetensors", "demo-sd1", "epsilon", "demo")
    cache = PipelineCache(device, 1 << 40, 0, lambda r: load_pipeline(r, device))
    done: list[JobDone] = []
    runner = BatchRunner(device, cache, lambda e: done.append(e) if isinstance(e, JobDone) else None, lambda _: False)
    right: dict[float, list[tuple[bool, bool]]] = {}
    for cfg in (7.0, 1.0):
        right[cfg] = []
        for start in range(0, count, 4):
            jobs = tuple(
                JobPart(f"j{i}", caption(*specs[i], form=i % 4), "", (1000 + i,)) for i in range(start, min(start + 4, count))
            )
            done.clear()
            runner.run(RunBatch.of("b", load, jobs, 64, 64, 20, cfg=cfg, sampler="DPM++ 2M", schedule="Karras"))
            pictures = {job.job_id: job.images[0].png for job in done}
            for job in jobs:
                index = int(job.job_id[1:])
                shape, background = dominant_colours(Image.open(io.BytesIO(pictures[job.job_id])).convert("RGB"))
                right[cfg].append((shape == specs[index][1], background == specs[index][2]))
    shares = {cfg: [sum(r[k] for r in right[cfg]) / count for k in (0, 1)] for cfg in right}
    differences = [int(a[0]) - int(b[0]) for a, b in zip(right[7.0], right[1.0], strict=True)]
    mean = sum(differences) / count
    spread = math.sqrt(sum((d - mean) ** 2 for d in differences) / max(count - 1, 1) / count)
    report(
        "demo_guidance",
        {
            "device": device,
            "prompts": count,
            "shape_right_cfg7": round(shares[7.0][0], 3),
            "background_right_cfg7": round(shares[7.0][1], 3),
            "shape_right_cfg1": round(shares[1.0][0], 3),
            "background_right_cfg1": round(shares[1.0][1], 3),
            "shape_gap": round(mean, 3),
            "shape_gap_95": [round(mean - 1.96 * spread, 3), round(mean + 1.96 * spread, 3)],
        },
    )


if __name__ == "__main__":
    main()
