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
import time
from pathlib import Path

import numpy as np

from bot.child_process import ChildProcess

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 180.0


class EmbeddingsUnavailable(Exception):
    pass


class EmbeddingProcess:
    """`python -m gpu_worker embed`, supervised by bot/child_process.py; JSON frames both ways."""

    def __init__(self, threads: int = 1, cache_dir: Path | None = None) -> None:
        self.threads = threads
        self.cache_dir = cache_dir
        self.backend = ""
        self.model = ""
        self.dim = 0
        self.load_seconds: float | None = None  # as the process measured it
        self.start_seconds: float | None = None  # from start() to ready, as the bot saw it
        self.failure: str | None = None
        self._child: ChildProcess | None = None
        self._ready: asyncio.Event | None = None
        self._started = 0.0
        self._pending: dict[int, asyncio.Future[dict]] = {}
        self._next_id = 0

    @property
    def ready(self) -> bool:
        return self._ready is not None and self._ready.is_set() and self.failure is None

    def start(self) -> None:
        """Start the process (returns at once; the model loads in the background)."""
        if self._child is not None:
            return
        self._ready = asyncio.Event()
        self._started = time.perf_counter()
        command = ["embed", "--threads", str(self.threads)]
        self._child = ChildProcess(
            "embedding process",
            command + (["--cache-dir", str(self.cache_dir)] if self.cache_dir else []),
            on_frame=self._frame,
            on_exit=self._exited,
        )
        self._child.start()

    def _frame(self, frame: bytes) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            log.error("the embedding process sent something that is not JSON; ignored")
            return
        assert self._ready is not None
        if not self._ready.is_set():  # its first message: ready, or why not
            if message.get("ready"):
                self.model, self.dim, self.load_seconds = message["model"], message["dim"], message["load_seconds"]
                self.backend = message.get("backend", "")
                self.start_seconds = time.perf_counter() - self._started
                log.info("embedding model %s ready in %.1f s (%s)", self.model, self.start_seconds, self.backend)
            else:
                self.failure = str(message.get("error"))
                log.warning("semantic search is off: %s", self.failure)
            self._ready.set()
            return
        future = self._pending.pop(message.get("id"), None)
        if future is not None and not future.done():
            future.set_result(message)

    def _exited(self, code: int | None) -> None:
        self.failure = self.failure or f"the embedding process exited ({code})"
        if self._ready is not None and not self._ready.is_set():
            log.warning("semantic search is off: %s", self.failure)
            self._ready.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(EmbeddingsUnavailable(self.failure))
        self._pending.clear()

    async def wait_ready(self) -> bool:
        self.start()
        assert self._ready is not None
        try:
            await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT_SECONDS)
        except TimeoutError:
            return False
        return self.ready

    async def embed(self, texts: list[str], *, wait: bool = True) -> np.ndarray:
        """One L2-normalised float32 row per text; EmbeddingsUnavailable when there is no model (yet)."""
        self.start()
        assert self._ready is not None and self._child is not None
        if not self._ready.is_set() and not wait:
            raise EmbeddingsUnavailable("the embedding model is still loading")
        if not await self.wait_ready():
            raise EmbeddingsUnavailable(self.failure or "the embedding model did not load in time")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._next_id += 1
        answer = self._pending[self._next_id] = asyncio.get_running_loop().create_future()
        if not self._child.send(json.dumps({"id": self._next_id, "texts": texts}).encode()):
            self._pending.pop(self._next_id, None)
            raise EmbeddingsUnavailable(self.failure or "the embedding process is gone")
        message = await answer
        if "error" in message:
            raise EmbeddingsUnavailable(message["error"])
        vectors = np.frombuffer(base64.b64decode(message["vectors"]), dtype=np.float32)
        return vectors.reshape(len(texts), self.dim)

    async def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            await child.stop(grace=10)  # the process ends when its end of the pipe closes
