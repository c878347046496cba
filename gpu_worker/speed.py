"""The speed options an operator turns on for a worker (common/worker_config.py), applied to a
model once it is placed:

- **channels_last** for a UNet and its VAE on CUDA (the convolutions' faster memory layout; the
  same pictures). Always on there.
- **Regional compilation** (`--compile`, EASEL_COMPILE): torch.compile of the denoiser's repeated
  blocks (diffusers' `compile_repeated_blocks`: Flux's and the SD UNet's transformer blocks), so one
  block's graph serves them all and compiling takes seconds, not minutes. Compiled once per model and
  picture size (torch's own cache; inductor keeps its kernels on disk across restarts). Not for a
  model offloaded block by block.
- **First-block cache** (`--cache-threshold`, EASEL_CACHE_THRESHOLD; diffusers' FirstBlockCache,
  from ParaAttention): at each step Flux's first transformer block runs; when its output changed by
  less than the threshold (relative mean) since the last step, the other blocks' last residual is
  reused instead of running them. Faster (fewer full steps), and it changes pictures, so their
  infotext says "First block cache: <threshold>". Flux only (SD3's transformer has no cache hooks
  in diffusers).
"""

from __future__ import annotations

import logging

import torch
from diffusers.hooks import FirstBlockCacheConfig

from common.worker_config import WorkerConfig
from gpu_worker.loaded import LoadedPipeline
from gpu_worker.placement import GROUP

log = logging.getLogger(__name__)

COMPILE_OPTIONS: dict[str, object] = {"fullgraph": True}  # torch.compile's, per block


def speed_up(loaded: LoadedPipeline, config: WorkerConfig, device: str) -> None:
    pipe = loaded.pipeline
    unet = getattr(pipe, "unet", None)
    if device.startswith("cuda") and unet is not None and loaded.placement != GROUP:
        channels_last(loaded)
    denoiser = getattr(pipe, "transformer", None) or unet
    if config.compile and loaded.placement != GROUP:
        if getattr(denoiser, "_repeated_blocks", None):
            denoiser.compile_repeated_blocks(**COMPILE_OPTIONS)
            loaded.compiled = True
        else:
            log.info("%s: no repeated blocks to compile", loaded.request.name)
    if config.cache_threshold and hasattr(denoiser, "enable_cache") and loaded.request.family == "flux":
        denoiser.enable_cache(FirstBlockCacheConfig(threshold=config.cache_threshold))
        loaded.first_block_cache = config.cache_threshold


def channels_last(loaded: LoadedPipeline) -> None:
    for part in (loaded.pipeline.unet, loaded.pipeline.vae):
        part.to(memory_format=torch.channels_last)
