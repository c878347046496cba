"""One worker described for people: /status on Discord and `python bot.py workers` say the same."""

from __future__ import annotations

import time

from bot.generation.service import WorkerStatus, loaded_names
from common.protocol import WorkerHeartbeat

STALE_SECONDS = 10.0  # a heartbeat older than this: the worker is probably gone


def describe(worker: WorkerStatus) -> tuple[str, str]:
    """(title, body): which worker, then its state, speed, jobs, loaded checkpoints, memory, heartbeat."""
    title = f"Worker {worker.slot} · {worker.device}" + (f" on {worker.machine}" if worker.machine else "")
    state = worker.state
    if worker.steps_per_second:
        state += f" · {worker.steps_per_second:.1f} it/s"
        if worker.speed_measured_on:  # the speed of what it last drew, said with its size
            state += f" on {worker.speed_measured_on}"
    lines = [state]
    if worker.jobs:
        lines.append("running job " + ", ".join(worker.jobs))
    lines.append(", ".join(worker.loaded) or "nothing loaded")
    if worker.memory_total:
        used, free, total = (n / 1e9 for n in (worker.memory_total - worker.memory_free, worker.memory_free, worker.memory_total))
        lines.append(f"memory: {used:.1f} GB used, {free:.1f} GB free of {total:.1f} GB")
    if worker.fetches:
        lines.append("fetches the model files it lacks")
    if worker.heartbeat_age is not None:
        lines.append(f"last heartbeat {worker.heartbeat_age:.1f} s ago · {worker.worker_id}")
    return title, "\n".join(lines)


def from_heartbeat(heartbeat: WorkerHeartbeat, slot: int, now: float | None = None) -> WorkerStatus:
    """A worker as its latest heartbeat on the broker says (ages by the worker's clock)."""
    age = max(0.0, (now or time.time()) - heartbeat.sent_at)
    state = "gone?" if age > STALE_SECONDS else "busy" if heartbeat.batches else "idle"
    return WorkerStatus(
        slot,
        heartbeat.device,
        state,
        heartbeat.pid,
        loaded_names(heartbeat.loaded, heartbeat.held_as, {}),
        heartbeat.steps_per_second,
        machine=heartbeat.machine,
        worker_id=heartbeat.worker_id,
        memory_total=heartbeat.memory_total,
        memory_free=heartbeat.memory_free,
        jobs=[f"batch {b}" for b in heartbeat.batches],
        heartbeat_age=age,
        fetches=heartbeat.fetches,
    )
