"""What a remote worker's fetch of a model file costs beside a plain copy (issue: workers fetch their
models by hash).

One file of --size-mb random bytes. Cases, interleaved, after one warm-up round, --repeats times:
- `copy`: shutil.copyfile to a fresh name, fsync'd (what an operator's copy by hand costs);
- `copy + sha256`: the same, then the copy hashed (a copy a worker verifies before use);
- `fetch`: the bot's share (aiohttp on loopback, its own event loop in a thread) to the worker's
  fetcher (httpx), which hashes as it writes, fsyncs and renames (gpu_worker/model_fetch.py).
The file stays in the page cache throughout (the warm-up reads it): this measures the transfer's own
cost on one machine, not a disk or a network. Ratios are against `copy` in the same run.

    python bench/model_fetch.py [--size-mb 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import report, spread, time_interleaved
from bot.generation.model_share import ModelShare, NeededFile, ShareOptions
from gpu_worker.model_fetch import Fetcher
from gpu_worker.model_index import ModelIndex


class ShareThread:
    """The bot's share in an event loop of its own, as the bot runs it beside Discord."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.share = ModelShare(ShareOptions(serve=True, host="127.0.0.1", port=0))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ModelShare:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.share.start(), self.loop).result()
        return self.share

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.share.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    size = args.size_mb * 1_000_000
    with tempfile.TemporaryDirectory(prefix="easel-fetch-bench-") as tmp:
        folder = Path(tmp)
        source = folder / "model.safetensors"
        with source.open("wb") as out:
            for _ in range(args.size_mb):
                out.write(os.urandom(1_000_000))
        sha = hashlib.sha256(source.read_bytes()).hexdigest()
        copies = folder / "copies"
        copies.mkdir()

        def copy(verify: bool) -> None:
            target = copies / "copy.safetensors"
            shutil.copyfile(source, target)
            with target.open("rb+") as f:
                os.fsync(f.fileno())
            if verify:
                with target.open("rb") as f:
                    assert hashlib.file_digest(f, "sha256").hexdigest() == sha
            target.unlink()

        with ShareThread() as share:
            worker_root = folder / "worker"

            def fetch() -> None:
                shutil.rmtree(worker_root, ignore_errors=True)
                worker_root.mkdir()
                fetcher = Fetcher(ModelIndex(worker_root), 10 * size)
                [ticket] = share.tickets("bench-worker", [NeededFile("checkpoint model", sha, str(source))])
                fetcher.fetch(ticket)

            cases = {"copy": lambda: copy(False), "copy + sha256": lambda: copy(True), "fetch": fetch}
            time_interleaved(cases, 1)  # warm-up: the page cache, the share's first connection
            times = time_interleaved(cases, args.repeats)
    base = sorted(times["copy"])[len(times["copy"]) // 2]
    figures: dict[str, object] = {"size_mb": args.size_mb, "repeats": args.repeats}
    for name, values in times.items():
        middle = sorted(values)[len(values) // 2]
        figures[name] = spread(values) | {"mb_per_s": round(args.size_mb / middle), "vs_copy": round(middle / base, 2)}
    report("model_fetch", figures)


if __name__ == "__main__":
    main()
