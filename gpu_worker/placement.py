"""How a model sits in device memory, chosen by the worker's budget (the cache's share of the card).

In order, the first that fits:
- **whole**: every part on the device (the fastest).
- **model offload**: the pipeline lives in CPU RAM and each part (text encoders, denoiser, VAE) is
  moved to the device while it runs (diffusers' model CPU offload): the largest part must fit.
- **fp8 weights + model offload** (flow models: FLUX.1's 12B transformer is 23.8 GB in bf16): the
  denoiser's weights stored in fp8 (e4m3fn) and each layer widened to the compute dtype as it runs
  (diffusers' layerwise casting; norms, embeddings and the output projection stay as they were),
  which halves it, then model offload. What Forge does with its "fp8 weights" option for Flux on 12-16 GB cards.
- **group offload**: each part's blocks moved in one at a time, the next block's copy overlapping the
  current one's compute on CUDA streams (diffusers' group offloading); the VAE stays on the device.
  The slowest, and it runs anything that fits in CPU RAM.

The VAE of an offloaded model is never woken for a preview (gpu_worker/families/flow.py).
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline
from diffusers.hooks import apply_layerwise_casting

from gpu_worker.gguf_weights import is_quantised

# Layers fp8 storage leaves as they are: the embeddings in and the projection out. Norm layers are
# never cast (diffusers casts linear, convolution and embedding layers only); the modulation layers
# beside them are (diffusers' default pattern "norm" would keep those, 3.2 of FLUX.1's 11.9 billion
# weights, in bf16), as in ComfyUI's and Forge's fp8 Flux files.
FP8_KEEPS = ("pos_embed", "patch_embed", "embedder", "norm_out", "^proj_in$", "^proj_out$")

WHOLE = "whole"
OFFLOAD = "model offload"
FP8 = "fp8 weights + model offload"
GROUP = "group offload"


def part_bytes(pipeline: DiffusionPipeline) -> dict[str, int]:
    """Bytes of each part (module) of the pipeline, by its name."""
    return {
        name: sum(t.numel() * t.element_size() for t in (*part.parameters(), *part.buffers()))
        for name, part in pipeline.components.items()
        if isinstance(part, torch.nn.Module)
    }


def _denoiser(pipeline: DiffusionPipeline) -> str:
    return "transformer" if isinstance(getattr(pipeline, "transformer", None), torch.nn.Module) else "unet"


def _fp8_bytes(part: torch.nn.Module) -> int:
    """A part's bytes with every weight stored in fp8 (an estimate: a few small layers stay as they are)."""
    return sum(p.numel() for p in part.parameters())


def choose(pipeline: DiffusionPipeline, budget: int | None, fp8: bool) -> str:
    """The first placement that fits `budget` (None: no limit); `fp8`: the family may store its
    denoiser's weights in fp8."""
    sizes = part_bytes(pipeline)
    if budget is None or sum(sizes.values()) <= budget:
        return WHOLE
    if max(sizes.values(), default=0) <= budget:
        return OFFLOAD
    denoiser = _denoiser(pipeline)
    others = max((size for name, size in sizes.items() if name != denoiser), default=0)
    # a GGUF transformer's matrices are quantised already (4 to 8 bits): fp8 storage would gain nothing
    quantised = denoiser in sizes and any(is_quantised(p) for p in getattr(pipeline, denoiser).parameters())
    if fp8 and not quantised and denoiser in sizes and max(_fp8_bytes(getattr(pipeline, denoiser)), others) <= budget:
        return FP8
    return GROUP


def resident(pipeline: DiffusionPipeline, placement: str) -> int:
    """The most a placement keeps on the device at once, for the cache's budget."""
    sizes = part_bytes(pipeline)
    if placement == WHOLE:
        return sum(sizes.values())
    if placement == OFFLOAD:
        return max(sizes.values(), default=0)
    denoiser = _denoiser(pipeline)
    if placement == FP8:  # the denoiser in fp8, or a larger other part
        others = (size for name, size in sizes.items() if name != denoiser)
        return max(_fp8_bytes(getattr(pipeline, denoiser)), *others, 0)
    return sizes.get("vae", 0) + max(sizes.values(), default=0) // 8  # the VAE, a block or two of the largest part


def apply(pipeline: DiffusionPipeline, placement: str, device: str, compute: torch.dtype) -> None:
    """Put a pipeline built in CPU RAM on `device` as `placement` says."""
    if placement == WHOLE:
        pipeline.to(device)
        return
    if placement == FP8:
        store_in_fp8(pipeline, compute)
    if placement in (OFFLOAD, FP8):
        pipeline.enable_model_cpu_offload(device=device)
        return
    pipeline.enable_group_offload(
        onload_device=torch.device(device),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=device.startswith("cuda"),
        exclude_modules=["vae"],  # small, and Easel calls it directly (gpu_worker/latents.py), not by forward
    )


def store_in_fp8(pipeline: DiffusionPipeline, compute: torch.dtype) -> None:
    """The denoiser's weights stored in fp8, each layer widened to `compute` while it runs."""
    # diffusers' function, not the model's method: the method adds the model's own "norm" pattern
    apply_layerwise_casting(getattr(pipeline, _denoiser(pipeline)), torch.float8_e4m3fn, compute, FP8_KEEPS)
