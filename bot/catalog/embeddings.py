"""The bot's side of the embedding process (gpu_worker/embedder.py).

The process is started early and loads its model (seconds: torch and sentence-transformers) while
the bot does other things; a search that comes before it is ready waits for it or, when asked not
to wait, goes on with full text and facets alone. If the model cannot be loaded at all, the
catalog still answers, without semantic similarity, and says why once in the log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 180.0


class EmbeddingsUnavailable(Exception):
    pass


class EmbeddingProcess:
    def __init__(self, threads: int = 1, cache_dir: Path | None = None) -> None:
        self.threads = threads
        self.cache_dir = cache_dir
        self.backend = ""
        self.model = ""
        self.dim = 0
        self.load_seconds: float | None = None  # as the process measured it
        self.start_seconds: float | None = None  # from start() to ready, as the bot saw it
        self.failure: str | None = None
        self._process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._lock = asyncio.Lock()
        self._next_id = 0

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.failure is None

    def start(self) -> None:
        """Start the process (returns at once; the model loads in the background)."""
        if self._process is not None:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-m", "gpu_worker", "embed", "--threads", str(self.threads)]
            + (["--cache-dir", str(self.cache_dir)] if self.cache_dir else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        started = time.perf_counter()
        threading.Thread(target=self._await_ready, args=(self._process, started), daemon=True).start()
        log.info("embedding process starting (pid %s)", self._process.pid)

    def _await_ready(self, process: subprocess.Popen[str], started: float) -> None:
        assert process.stdout is not None
        line = process.stdout.readline()
        try:
            hello = json.loads(line) if line else {"error": f"the embedding process exited ({process.wait()})"}
        except json.JSONDecodeError:
            hello = {"error": f"the embedding process said something unexpected: {line[:200]!r}"}
        if hello.get("ready"):
            self.model, self.dim, self.load_seconds = hello["model"], hello["dim"], hello["load_seconds"]
            self.backend = hello.get("backend", "")
            self.start_seconds = time.perf_counter() - started
            log.info("embedding model %s ready in %.1f s (%s)", self.model, self.start_seconds, self.backend)
        else:
            self.failure = str(hello.get("error"))
            log.warning("semantic search is off: %s", self.failure)
        self._ready.set()

    async def wait_ready(self) -> bool:
        self.start()
        if not self._ready.is_set():
            await asyncio.to_thread(self._ready.wait, READY_TIMEOUT_SECONDS)
        return self.ready

    async def embed(self, texts: list[str], *, wait: bool = True) -> np.ndarray:
        """One L2-normalised float32 row per text; EmbeddingsUnavailable when there is no model (yet)."""
        self.start()
        if not self._ready.is_set() and not wait:
            raise EmbeddingsUnavailable("the embedding model is still loading")
        if not await self.wait_ready():
            raise EmbeddingsUnavailable(self.failure or "the embedding model did not load in time")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        async with self._lock:  # one request on the pipe at a time
            self._next_id += 1
            return await asyncio.to_thread(self._roundtrip, self._next_id, texts)

    def _roundtrip(self, request_id: int, texts: list[str]) -> np.ndarray:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps({"id": request_id, "texts": texts}) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        except (BrokenPipeError, OSError) as e:
            line = ""
            log.warning("embedding process pipe: %s", e)
        if not line:
            self.failure = f"the embedding process exited ({process.poll()})"
            raise EmbeddingsUnavailable(self.failure)
        answer = json.loads(line)
        if "error" in answer:
            raise EmbeddingsUnavailable(answer["error"])
        vectors = np.frombuffer(base64.b64decode(answer["vectors"]), dtype=np.float32)
        return vectors.reshape(len(texts), self.dim)

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        assert process.stdin is not None
        process.stdin.close()  # the process ends when its input does
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
