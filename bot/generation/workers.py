"""One worker process per device: `python -m gpu_worker serve`, supervised by bot/child_process.py,
speaking the worker protocol (common/protocol.py: JSON frames, never pickles).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict

from bot.child_process import ChildProcess
from common.protocol import MAX_FRAME_BYTES, BadFrame, RunBatch, Shutdown, WorkerReady, decode, encode
from common.worker_config import WorkerConfig


def worker_configs(
    devices: list[str],
    cache_device_gb: float | None,
    cache_cpu_gb: float | None,
    log_level: str = "INFO",
    **engine: object,
) -> list[WorkerConfig]:
    """One worker per configured device; `engine`: WorkerConfig's engine options (precision, …)."""

    def to_bytes(gb: float | None) -> int | None:
        return None if gb is None else int(gb * 1e9)

    return [
        WorkerConfig(device, to_bytes(cache_device_gb), to_bytes(cache_cpu_gb), log_level, **engine)  # type: ignore[arg-type]
        for device in devices
    ]


log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0

EventCallback = Callable[["WorkerProcess", object], None]
ExitCallback = Callable[["WorkerProcess", "int | None"], None]


class WorkerProcess:
    """One GPU worker: a ChildProcess that speaks the worker protocol, and what the service knows of it."""

    remote = False

    def __init__(self, slot: int, config: WorkerConfig, on_event: EventCallback, on_exit: ExitCallback) -> None:
        self.slot = slot
        self.config = config
        self._on_event = on_event
        self._on_exit = on_exit
        self.device = config.device
        self.ready = False
        self.batch: RunBatch | None = None
        self.loaded: tuple[str, ...] = ()
        self.held_as: tuple[str, ...] = ()  # how each of `loaded` sits in its memory
        self.steps_per_second = 0.0
        self.memory_total = 0  # bytes of its device, as its last word said
        self.memory_free = 0
        self.speed_measured_on = ""  # the batch the speed was measured on (its size, its pictures)
        self.generation = 0  # restarts of this slot
        self.dispatched_at = 0.0
        self._child: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def idle(self) -> bool:
        return self.ready and self.batch is None

    @property
    def name(self) -> str:
        return self.device

    @property
    def label(self) -> str:
        return self.device

    def can_run(self, spec: object) -> str | None:
        """The bot's own worker reads the registry's files where they are: it can run any job."""
        return None

    def start(self) -> None:
        self.ready = False
        self._child = ChildProcess(
            f"worker {self.slot} ({self.config.device})",
            ["serve", "--config", json.dumps(asdict(self.config))],
            on_frame=self._frame,
            on_exit=lambda code: self._on_exit(self, code),
            max_frame=MAX_FRAME_BYTES,
        )
        self._child.start()

    def send(self, command: object) -> None:
        assert self._child is not None
        self._child.send(encode(command))

    def _frame(self, frame: bytes) -> None:
        try:
            event = decode(frame)
        except BadFrame as e:
            log.error("worker %d sent a frame that is not a message (%s); ignored", self.slot, e)
            return
        if isinstance(event, WorkerReady):
            self.ready = True
            self.device = event.device
        self._on_event(self, event)

    async def stop(self) -> None:
        if self._child is not None:
            await self._child.stop(goodbye=encode(Shutdown()), grace=STOP_GRACE_SECONDS)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the service notices and restarts the worker."""
        if self._child is not None:
            self._child.kill()
