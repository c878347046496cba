"""Single-file load into a ready pipeline vs safetensors.torch.load_file of the same file (target ≤ 1.5×).

Builds a full-size SD1.5-layout checkpoint (random fp16 weights, ~2 GB) from the bundled `sd1`
config, then times, interleaved: reading the tensors raw, and the worker's `load_pipeline`.
python bench/load_single_file.py   (writes bench/results/load_single_file-DATE.json)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file

from bench.harness import median, report, time_interleaved
from bot.checkpoints.inspection import inspect_file
from common.protocol import LoadRequest
from gpu_worker.loader import load_pipeline
from gpu_worker.testing.tiny import components_from_config, single_file_state_dict


def write_full_size_sd1(path: Path) -> None:
    with init_empty_weights():
        parts = components_from_config("sd1")
    layout = single_file_state_dict(parts, "sd1")
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=generator) * 0.02).half() for k, v in layout.items()}
    save_file(state, str(path))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sd15-random.safetensors"
        write_full_size_sd1(path)
        ins = inspect_file(path)
        request = LoadRequest(
            str(path), "bench", ins.architecture.family, ins.architecture.label, "safetensors", ins.pipeline_config
        )
        load_file(path)  # warm the page cache so both sides read from memory
        times = time_interleaved(
            {
                "load_file": lambda: load_file(path),
                # load_file memory-maps: tensors are views of the page cache, no byte is copied.
                # A pipeline owns its weights, so also time load_file plus one copy of every tensor.
                "load_file_and_copy": lambda: {k: v.clone() for k, v in load_file(path).items()},
                "load_pipeline_fp16": lambda: load_pipeline(request, "cpu", torch.float16),
            },
            repeats=3,
        )
        size = path.stat().st_size
    raw, pipeline = median(times["load_file"]), median(times["load_pipeline_fp16"])
    copied = median(times["load_file_and_copy"])
    report(
        "load_single_file",
        {
            "file_bytes": size,
            "architecture": ins.architecture.label,
            "load_file_s": round(raw, 3),
            "load_pipeline_s": round(pipeline, 3),
            "load_file_and_copy_s": round(copied, 3),
            "ratio_pipeline_vs_load_file": round(pipeline / raw, 3),
            "ratio_pipeline_vs_load_file_and_copy": round(pipeline / copied, 3),
        },
    )


if __name__ == "__main__":
    main()
