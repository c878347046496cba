"""One worker process per device: start it, talk to it, notice when it dies.

The process is `python -m gpu_worker serve --fd N`, joined to the bot by a socket pair wrapped in
multiprocessing Connections (what `multiprocessing.Pipe` does), so it shares nothing with the bot
but that pipe; only length-prefixed JSON frames cross it (gpu_worker/protocol.py), never pickles. A reader thread waits on the pipe and hands every event to the event loop; when the
pipe closes (the process exited or was killed) it reports the exit code, within a second or two.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path

from gpu_worker.protocol import MAX_FRAME_BYTES, BadFrame, RunBatch, Shutdown, WorkerReady, decode, encode
from gpu_worker.worker import WorkerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def worker_configs(
    devices: list[str], cache_device_gb: float | None, cache_cpu_gb: float | None, log_level: str = "INFO"
) -> list[WorkerConfig]:
    """One worker per configured device."""

    def to_bytes(gb: float | None) -> int | None:
        return None if gb is None else int(gb * 1e9)

    return [WorkerConfig(device, to_bytes(cache_device_gb), to_bytes(cache_cpu_gb), log_level) for device in devices]


log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0

EventCallback = Callable[["WorkerProcess", object], None]
ExitCallback = Callable[["WorkerProcess", "int | None"], None]


class WorkerProcess:
    def __init__(self, slot: int, config: WorkerConfig, on_event: EventCallback, on_exit: ExitCallback) -> None:
        self.slot = slot
        self.config = config
        self._on_event = on_event
        self._on_exit = on_exit
        self.device = config.device
        self.ready = False
        self.batch: RunBatch | None = None
        self.loaded: tuple[str, ...] = ()
        self.steps_per_second = 0.0
        self.generation = 0  # restarts of this slot
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def idle(self) -> bool:
        return self.ready and self.batch is None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpu_worker",
                "serve",
                "--fd",
                str(theirs.fileno()),
                "--config",
                json.dumps(asdict(self.config)),
            ],
            pass_fds=(theirs.fileno(),),
            cwd=REPO_ROOT,
        )
        theirs.close()  # so we see EOF the moment the worker dies
        self._conn = Connection(ours.detach())
        self.ready = False
        threading.Thread(
            target=self._read, args=(self._conn, self._process), name=f"worker-{self.slot}-events", daemon=True
        ).start()
        log.info("worker %d starting on %s (pid %s)", self.slot, self.config.device, self._process.pid)

    def send(self, command: object) -> None:
        assert self._conn is not None
        try:
            self._conn.send_bytes(encode(command))
        except (BrokenPipeError, OSError):
            log.warning("worker %d: pipe closed while sending %s", self.slot, type(command).__name__)

    def _read(self, conn: Connection, process: subprocess.Popen[bytes]) -> None:
        while True:
            try:
                event = decode(conn.recv_bytes(MAX_FRAME_BYTES))  # decoded here, off the event loop
            except (EOFError, OSError):
                break
            except BadFrame as e:
                log.error("worker %d sent a frame that is not a message (%s); ignored", self.slot, e)
                continue
            self._post(self._handle, event)
        conn.close()
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # it closed the pipe but lingers: it is of no use any more
            process.kill()
            code = process.wait()
        self._post(self._on_exit, self, code)

    def _handle(self, event: object) -> None:
        if isinstance(event, WorkerReady):
            self.ready = True
            self.device = event.device
        self._on_event(self, event)

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the bot is shutting down
            pass

    async def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self.send(Shutdown())
        try:
            await asyncio.to_thread(self._process.wait, STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            await asyncio.to_thread(self._process.wait)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the service notices and restarts the worker."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
