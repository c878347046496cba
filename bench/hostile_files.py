"""Peak memory of `inspect` and `convert` on hostile files, as a ratio to a normal file of the same size;
and `inspect` time on a 90 MB safetensors header against a 1 MB one.

Each measurement runs in a fresh process (peak RSS is per process), alternating hostile and normal
runs so machine noise hits both alike. Goal: every ratio <= 1.5.

python bench/hostile_files.py [--repeats N]   (writes bench/results/hostile_files-DATE.json)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import median, report  # noqa: E402


def child(command: str, path: str) -> None:
    """Run one command on one file in this (fresh) process; print its outcome, time and peak RSS."""
    from bot.checkpoints.convert import convert_to_safetensors
    from bot.checkpoints.inspection import inspect_file
    from common.errors import CheckpointFileError

    started = time.perf_counter()
    try:
        if command == "inspect":
            inspect_file(Path(path))
        else:
            out = Path(path).with_name(Path(path).name + ".converted.safetensors")
            convert_to_safetensors(Path(path), out)
            out.unlink()
        outcome = "accepted"
    except CheckpointFileError as e:
        outcome = f"refused: {str(e).split(': ', 1)[-1][:90]}"
    seconds = time.perf_counter() - started
    print(json.dumps({"outcome": outcome, "seconds": seconds, "rss": peak_rss()}))


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM): getrusage's maxrss carries the parent's peak over fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(command: str, path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", command, str(path)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def normal_checkpoint(path: Path, size: int) -> Path:
    """A genuine torch.save file of about `size` bytes (random float32 weights)."""
    import torch

    count = max(1, size // 4 // 16)
    torch.save({"state_dict": {f"w{i}": torch.randn(count) for i in range(16)}}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("COMMAND", "PATH"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from tests.hostile_files import (
        big_metadata_safetensors,
        deep_tuple,
        inflating_pickle,
        tensor_pickle,
        torch_zip,
    )
    from tests.hostile_files import integer as pickled_int
    from tests.hostile_files import tuple_of as pickled_tuple

    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        hostile = {
            "pickle inflating 1000x (zip bomb)": torch_zip(
                base / "bomb.ckpt", inflating_pickle(512 << 20), compress=True
            ),
            "storage inflating 1000x": torch_zip(
                base / "storage_bomb.ckpt", tensor_pickle(128 << 20), {"0": bytes(512 << 20)}, compress=True
            ),
            "stride-0 view, 512 MiB output": torch_zip(
                base / "stride0.ckpt",
                tensor_pickle(1, size=pickled_tuple(pickled_int(1 << 27)), stride=pickled_tuple(pickled_int(0))),
                {"0": bytes(4)},
            ),
            "tuple nested 200,000 deep": torch_zip(base / "deep.ckpt", deep_tuple()),
        }
        views = base / "views.ckpt"
        import torch

        shared = torch.randn(1 << 18)
        torch.save({f"v{i}": shared[i * 2621 : (i + 1) * 2621] for i in range(100)}, views)
        hostile["100 views of one storage"] = views

        for label, path in hostile.items():
            normal = normal_checkpoint(base / f"normal-{path.stem}.ckpt", path.stat().st_size)
            for command in ("inspect", "convert"):
                bad_rss, good_rss, bad_s, outcome = [], [], [], ""
                for _ in range(args.repeats):
                    bad = measure(command, path)
                    good = measure(command, normal)
                    bad_rss.append(bad["rss"])
                    good_rss.append(good["rss"])
                    bad_s.append(bad["seconds"])
                    outcome = bad["outcome"]
                key = f"{label} · {command}"
                figures[f"{key} · file bytes"] = path.stat().st_size
                figures[f"{key} · outcome"] = outcome
                figures[f"{key} · peak RSS MB"] = round(median(bad_rss) / 1e6, 1)
                figures[f"{key} · RSS ratio to a normal file"] = round(median(bad_rss) / median(good_rss), 2)
                figures[f"{key} · seconds"] = round(median(bad_s), 3)

        small = big_metadata_safetensors(base / "header-1mb.safetensors", 1_000_000)
        large = big_metadata_safetensors(base / "header-90mb.safetensors", 90_000_000)
        small_s, large_s, small_rss, large_rss = [], [], [], []
        for _ in range(args.repeats):
            a, b = measure("inspect", small), measure("inspect", large)
            small_s.append(a["seconds"])
            large_s.append(b["seconds"])
            small_rss.append(a["rss"])
            large_rss.append(b["rss"])
        figures["inspect 1 MB header · seconds"] = round(median(small_s), 3)
        figures["inspect 90 MB header · seconds"] = round(median(large_s), 3)
        figures["inspect 90 MB header · time ratio to 1 MB"] = round(median(large_s) / median(small_s), 1)
        figures["inspect 90 MB header · peak RSS MB"] = round(median(large_rss) / 1e6, 1)
        figures["inspect 90 MB header · RSS ratio to 1 MB header"] = round(median(large_rss) / median(small_rss), 2)
    report("hostile_files", figures)


if __name__ == "__main__":
    main()
