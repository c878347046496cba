"""Header inspection time of a ≥ 2 GB file vs a tiny one with the same tensor names: constant.

python bench/inspect_header.py   (writes bench/results/inspect_header-DATE.json)
"""

from __future__ import annotations

import json
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import median, report, time_interleaved
from bot.checkpoints.inspection import inspect_file


def write_sd1_like(path: Path, scale: int) -> int:
    """An SD1-shaped header (1,131 tensors, real names) over a sparse data section."""
    names = [f"model.diffusion_model.input_blocks.{i}.{j}.weight" for i in range(12) for j in range(40)]
    names += [f"first_stage_model.decoder.up.{i}.block.{j}.conv1.weight" for i in range(4) for j in range(60)]
    names += [
        f"cond_stage_model.transformer.text_model.encoder.layers.{i}.mlp.fc{j}.weight"
        for i in range(12)
        for j in range(1, 35)
    ]
    names = names[:1131]
    header: dict[str, object] = {"__metadata__": {"modelspec.title": "bench"}}
    offset = 0
    for name in names:
        n = 1024 * scale
        header[name] = {"dtype": "F16", "shape": [n], "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    header["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = {
        "dtype": "F16",
        "shape": [8],
        "data_offsets": [offset, offset + 16],
    }
    offset += 16
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    return path.stat().st_size


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        big, tiny = Path(tmp) / "big.safetensors", Path(tmp) / "tiny.safetensors"
        big_size = write_sd1_like(big, scale=1000)  # ~2.3 GB
        tiny_size = write_sd1_like(tiny, scale=1)
        times = time_interleaved({"big": lambda: inspect_file(big), "tiny": lambda: inspect_file(tiny)}, repeats=50)
    report(
        "inspect_header",
        {
            "big_file_bytes": big_size,
            "tiny_file_bytes": tiny_size,
            "big_median_ms": round(median(times["big"]) * 1e3, 3),
            "tiny_median_ms": round(median(times["tiny"]) * 1e3, 3),
            "ratio_big_vs_tiny": round(median(times["big"]) / median(times["tiny"]), 3),
        },
    )


if __name__ == "__main__":
    main()
