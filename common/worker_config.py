"""How the bot starts a worker process: passed as JSON on its command line (`--config`); and the
engine options an operator sets for every worker, as both command lines take them."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
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
    # torch.compile of the denoiser's repeated blocks (regional compilation), on CUDA: slower first
    # pictures per size, faster after (gpu_worker/speed.py).
    compile: bool = False
    # First-block cache on Flux's transformer (0 = off): a step whose first block changes the result
    # by less than this (relative) reuses the last step's other blocks. Faster, and changes pictures:
    # written in their infotext.
    cache_threshold: float = 0.0


PRECISIONS = ("auto", "full", "half", "bf16")
VAE_PRECISIONS = ("auto", "full")
ENGINE = ("precision", "vae_precision", "compile", "cache_threshold")  # WorkerConfig's engine options


def add_engine_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """--precision, --vae-precision, --compile, --cache-threshold. Defaults from EASEL_* in `environ`
    when given (a remote worker, which reads no bot settings); else None, for the caller's settings."""

    def default(name: str, fallback: str) -> str | None:
        return environ.get(f"EASEL_{name}", fallback) if environ is not None else None

    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=default("PRECISION", "auto"),
        help="what the models compute in: auto (fp16/bf16 on a GPU, float32 on a CPU), full, half or bf16 "
        "(default: EASEL_PRECISION or auto)",
    )
    parser.add_argument(
        "--vae-precision",
        choices=VAE_PRECISIONS,
        default=default("VAE_PRECISION", "auto"),
        help="the VAE's: auto (the model's, float32 where fp16 overflows) or full, as A1111's --no-half-vae "
        "(default: EASEL_VAE_PRECISION or auto)",
    )
    compile_default = default("COMPILE", "0")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None if compile_default is None else compile_default.lower() in ("1", "true", "yes"),
        help="torch.compile the denoiser's repeated blocks on CUDA (default: EASEL_COMPILE or off)",
    )
    threshold_default = default("CACHE_THRESHOLD", "0")
    parser.add_argument(
        "--cache-threshold",
        type=_threshold,
        default=None if threshold_default is None else _threshold(threshold_default),
        help="first-block cache on Flux, 0-1 (0.05-0.1 are usual; 0: off). Faster; changes pictures "
        "(default: EASEL_CACHE_THRESHOLD or 0)",
    )


def engine_of(args: argparse.Namespace) -> dict[str, object]:
    """The engine options the command line gave (those left unset are not in it)."""
    return {name: getattr(args, name) for name in ENGINE if getattr(args, name, None) is not None}


def engine_flags(engine: Mapping[str, object]) -> list[str]:
    """The command-line flags that give `engine` to a worker started as a child process."""
    flags: list[str] = []
    for name, value in engine.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            flags += [flag, str(value)]
    return flags


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is outside 0-1")
    return value
