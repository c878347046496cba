"""Where the bundled diffusers configs and tokenizers live (what a hub would otherwise serve).

Both sides read them: the worker builds pipelines from them, the bot counts and shows tokens."""

from __future__ import annotations

from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
