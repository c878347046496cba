"""How often regional prompting puts each region's background where its region is, on the demo model,
and what the regions cost: the wider measure behind tests/test_demo_model.py's regions check.

Pairs of backgrounds (each with a shape) in two columns (`ADDCOL`, ratio 1,1) and in two rows (`ADDROW`,
`1,1 rows`), over N seeds each (the test's seeds 1-2 left out), drawn with the bot's defaults (DPM++ 2M
Karras, 20 steps, CFG 7) through the worker's batch runner; a half is right when most of its pixels
are nearest its region's background colour. The control: the same prompts joined by BREAK, no
regions, judged the same way (how often the halves come out so by chance). Then the time of a two-region picture against the plain
prompt's (the same prompts joined, no regions), interleaved, 5 rounds after a warm-up.
python bench/demo_regions.py [N]   (default 12; writes bench/results/demo_regions-DATE.json)
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image

from bench.harness import report, spread, time_interleaved
from bot.demo import DEMO_FILE
from bot.demo.world import COLOURS, colour_names
from common.protocol import JobDone, JobPart, LoadRequest, RunBatch
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline
from gpu_worker.runner import BatchRunner

PAIRS = [("blue", "green"), ("red", "yellow"), ("black", "white"), ("purple", "orange")]
SHAPES = {"blue": "a small red circle", "green": "a small white square", "red": "a small blue triangle",
          "yellow": "a small black diamond", "black": "a small yellow circle", "white": "a small purple square",
          "purple": "a small orange triangle", "orange": "a small green diamond"}  # fmt: skip


def commonest(picture: Image.Image, box: tuple[int, int, int, int]) -> str:
    names, _ = colour_names(np.asarray(picture.crop(box)).reshape(-1, 3))
    return list(COLOURS)[int(np.bincount(names, minlength=len(COLOURS)).argmax())]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    load = LoadRequest(str(DEMO_FILE), "demo", "sd1", "SD1.x", "safetensors", "demo-sd1", "epsilon", "demo")
    cache = PipelineCache(device, 1 << 40, 0, lambda r: load_pipeline(r, device))
    done: list[JobDone] = []
    runner = BatchRunner(device, cache, lambda e: done.append(e) if isinstance(e, JobDone) else None, lambda _: False)

    def draw(prompt: str, regions: str, seeds: tuple[int, ...]) -> list[Image.Image]:
        done.clear()
        runner.run(RunBatch.of("b", load, (JobPart("j", prompt, "", seeds),), 64, 64, 20, cfg=7.0, sampler="DPM++ 2M", schedule="Karras", regions=regions))
        return [Image.open(io.BytesIO(image.png)).convert("RGB") for image in done[0].images]

    seeds = tuple(range(3, 3 + count))
    right = {"columns": 0, "rows": 0, "control": 0}
    per_pair: dict[str, dict[str, int]] = {}
    for first, second in PAIRS:
        a, b = f"{SHAPES[first]} on a {first} background", f"{SHAPES[second]} on a {second} background"
        pair = per_pair.setdefault(f"{first}|{second}", {})
        for mode, key, regions, boxes in (
            ("columns", "ADDCOL", "1,1", ((0, 0, 32, 64), (32, 0, 64, 64))),
            ("rows", "ADDROW", "1,1 rows", ((0, 0, 64, 32), (0, 32, 64, 64))),
            ("control", "BREAK", "", ((0, 0, 32, 64), (32, 0, 64, 64))),
        ):
            hits = sum(
                (commonest(picture, boxes[0]), commonest(picture, boxes[1])) == (first, second)
                for picture in draw(f"{a} {key} {b}", regions, seeds)
            )
            right[mode] += hits
            pair[mode] = hits
    total = len(PAIRS) * count
    a, b = f"{SHAPES['blue']} on a blue background", f"{SHAPES['green']} on a green background"
    cases = {"plain": lambda: draw(f"{a} BREAK {b}", "", (1,)), "two regions": lambda: draw(f"{a} ADDCOL {b}", "1,1", (1,))}
    for case in cases.values():  # warm-up
        case()
    times = time_interleaved(cases, 5)
    report(
        "demo_regions",
        {
            "device": device,
            "pictures_per_mode": total,
            "columns_right": round(right["columns"] / total, 3),
            "rows_right": round(right["rows"] / total, 3),
            "control_right": round(right["control"] / total, 3),
            "right_per_pair_of_seeds": per_pair,
            "seconds_plain": spread(times["plain"]),
            "seconds_two_regions": spread(times["two regions"]),
            "two_regions_over_plain": round(spread(times["two regions"])["median"] / spread(times["plain"])["median"], 3),
        },
    )


if __name__ == "__main__":
    main()
