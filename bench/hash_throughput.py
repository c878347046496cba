"""sha256 throughput of Easel's hasher vs plain hashlib over the same file read raw (target ≥ 0.9×).

python bench/hash_throughput.py [SIZE_MB]   (default 1024; writes bench/results/hash_throughput-DATE.json)
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import median, report, time_interleaved
from common.hashing import hash_file


def raw_hashlib(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.bin"
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(size_mb):
                f.write(block)
        assert hash_file(path).sha256 == raw_hashlib(path)
        times = time_interleaved({"easel": lambda: hash_file(path), "hashlib": lambda: raw_hashlib(path)}, repeats=5)
    easel, raw = median(times["easel"]), median(times["hashlib"])
    report(
        "hash_throughput",
        {
            "file_mb": size_mb,
            "easel_mb_per_s": round(size_mb / easel, 1),
            "hashlib_mb_per_s": round(size_mb / raw, 1),
            "throughput_ratio_easel_vs_hashlib": round(raw / easel, 3),
        },
    )


if __name__ == "__main__":
    main()
