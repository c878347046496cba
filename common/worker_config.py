"""How the bot starts a worker process: passed as JSON on its command line (`--config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerConfig:
    device: str = "auto"  # auto | cpu | mps | cuda | cuda:N
    device_budget_bytes: int | None = None  # pipeline cache on the device; None = derived from memory size
    cpu_budget_bytes: int | None = None  # second tier (GPU workers only)
    log_level: str = "INFO"
    # What the models compute in, as A1111's --no-half and --precision: auto (fp16 for SD families
    # and bf16 for flow models on CUDA, float32 on a CPU), full (float32), half (fp16) or bf16.
    precision: str = "auto"
    # The VAE's, as A1111's --no-half-vae: auto (the model's; in fp16, a call whose result overflows
    # runs again in float32, and that VAE's calls stay in float32: gpu_worker/latents.py) or full
    # (every VAE held in float32).
    vae_precision: str = "auto"


PRECISIONS = ("auto", "full", "half", "bf16")
VAE_PRECISIONS = ("auto", "full")
