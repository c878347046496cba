"""How the bot starts a worker process: passed as JSON on its command line (`--config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerConfig:
    device: str = "auto"  # auto | cpu | mps | cuda | cuda:N
    device_budget_bytes: int | None = None  # pipeline cache on the device; None = derived from memory size
    cpu_budget_bytes: int | None = None  # second tier (GPU workers only)
    log_level: str = "INFO"
