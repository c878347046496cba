"""What crosses the boundary between the bot and a worker. Plain dataclasses: no torch here."""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass(frozen=True)
class LoadRequest:
    """Everything the worker needs to turn a registered checkpoint into a pipeline."""

    path: str
    name: str  # registry slug, for messages
    family: str  # sd1 | sd2 | sdxl | ... (anything else is refused with its label)
    architecture: str  # human label, e.g. "SD2.x v-prediction"
    format: str  # safetensors | ckpt | diffusers
    pipeline_config: str | None  # bundled config folder id; None for diffusers folders
    prediction: str = "epsilon"  # epsilon | v
    sha256: str = ""
