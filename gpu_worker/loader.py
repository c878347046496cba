"""Turn a registered checkpoint into a ready pipeline on its device, with no network.

The family builds it (gpu_worker/families/); here it is placed on the device — or, when it is
larger than the device's budget, kept in CPU RAM with each part moved over while it runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# With this true, diffusers fetches CUDA kernels for GGUF layers from the Hub and runs them: never here.
os.environ["DIFFUSERS_GGUF_CUDA_KERNELS"] = "false"

import diffusers
import torch
import transformers

from common.protocol import LoadRequest
from gpu_worker.families import FAMILIES
from gpu_worker.loaded import CheckpointLoadError, LoadedPipeline
from gpu_worker.model_parts import PartError
from gpu_worker.placement import apply, choose

# Operators read our log lines; diffusers' per-load progress bars and cast notes are noise there.
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar, e.g. for LoRA text-encoder layers


def default_dtype(device: str, family: str = "sd1", precision: str = "auto") -> torch.dtype:
    """The dtype a model runs in: the precision asked for (half and bf16 work on a CPU too), or by
    default float32 on a CPU and on a GPU the family's own (fp16 for SD, bf16 for Flux and SD3)."""
    if precision != "auto":
        return {"full": torch.float32, "half": torch.float16, "bf16": torch.bfloat16}[precision]
    if not device.startswith("cuda"):
        return torch.float32
    return FAMILIES[family].gpu_dtype if family in FAMILIES else torch.float16


def load_pipeline(
    request: LoadRequest, device: str = "cpu", dtype: torch.dtype | None = None, budget: int | None = None
) -> LoadedPipeline:
    """Built, then placed on `device` (tests, benches, the debug run; the cache makes room between the two)."""
    loaded = build_pipeline(request, device, dtype)
    place(loaded, device, budget)
    return loaded


def vae_dtype(vae_precision: str) -> torch.dtype | None:
    """The dtype every VAE is held in (full: float32, A1111's --no-half-vae); None: the model's."""
    return torch.float32 if vae_precision == "full" else None


def build_pipeline(
    request: LoadRequest, device: str = "cpu", dtype: torch.dtype | None = None, vae: torch.dtype | None = None
) -> LoadedPipeline:
    """The checkpoint's pipeline in CPU RAM, in the dtype it will run in on `device` (parts from the
    component store already on `device` are shared, not copied), its VAE in `vae` if given."""
    family = FAMILIES.get(request.family)
    if family is None:
        raise CheckpointLoadError(f"{request.name}: {request.architecture} checkpoints cannot be run by Easel")
    dtype = dtype or default_dtype(device, request.family)
    path = Path(request.path)
    if not path.exists():
        raise CheckpointLoadError(f"{request.name}: the file {path} is missing from disk")
    started = time.perf_counter()
    try:
        pipeline = family.build(request, dtype, device)
    except CheckpointLoadError:
        raise
    except PartError as e:
        raise CheckpointLoadError(str(e)) from None
    except Exception as e:  # diffusers reports layout problems with many exception types
        raise CheckpointLoadError(f"{request.name}: could not build a pipeline: {type(e).__name__}: {e}") from e
    pipeline.set_progress_bar_config(disable=True)
    if vae is not None:  # the pipelines are given and return latents: only gpu_worker/latents.py calls it
        pipeline.vae.to(dtype=vae)
    loaded = LoadedPipeline(
        pipeline, request, "cpu", dtype, time.perf_counter() - started, dict(pipeline.scheduler.config)
    )
    loaded.fp8_storage = family.fp8_storage
    return loaded


def place(loaded: LoadedPipeline, device: str, budget: int | None = None) -> None:
    """A built pipeline onto its device, whole or, larger than the budget, as gpu_worker/placement.py
    chooses (on a CPU worker the device is the RAM it was built in: it stays)."""
    started = time.perf_counter()
    if device != "cpu":  # it was built on the CPU; walking every module to stay there costs 0.15 s
        loaded.placement = choose(loaded.pipeline, budget, loaded.fp8_storage)
        apply(loaded.pipeline, loaded.placement, device, loaded.dtype)
    loaded.device = device
    loaded.load_seconds += time.perf_counter() - started
