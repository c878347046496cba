"""A checkpoint loaded as a pipeline, and the same modules as image-to-image and inpainting pipelines.

The record every part of the worker shares (cache, LoRAs, VAEs, families, runner); loader.py makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline

from common.protocol import LoadRequest
from gpu_worker.placement import WHOLE


class CheckpointLoadError(Exception):
    """The checkpoint cannot be loaded; the message says why in one line, for the user."""


@dataclass
class LoadedPipeline:
    pipeline: DiffusionPipeline
    request: LoadRequest
    device: str
    dtype: torch.dtype
    load_seconds: float
    # The checkpoint's own scheduler config: every job's sampler is built from this, never from
    # the previous job's scheduler, so one job's sampler options cannot leak into the next.
    base_scheduler_config: dict = field(default_factory=dict)
    # LoRA adapters injected into this pipeline (gpu_worker/loras.py), least recently used first.
    adapters: list[str] = field(default_factory=list)
    # The same modules as image-to-image and inpainting pipelines, made when first needed.
    derived: dict[str, DiffusionPipeline] = field(default_factory=dict)
    own_vae: object | None = None  # the checkpoint's own VAE, while a job's VAE (gpu_worker/vaes.py) stands in
    # How it sits in device memory (gpu_worker/placement.py): whole, or larger than the budget,
    # kept in CPU RAM with its parts (or their blocks) moved to the device while they run.
    placement: str = WHOLE
    fp8_storage: bool = False  # its family may store the denoiser's weights in fp8 when that makes it fit
    # The speed options applied to it (gpu_worker/speed.py): its repeated blocks compiled, and the
    # first-block cache's threshold (0: off), which its pictures' infotext says.
    compiled: bool = False
    first_block_cache: float = 0.0

    @property
    def offloaded(self) -> bool:
        return self.placement != WHOLE


def image_to_image(loaded: LoadedPipeline, factory=None) -> DiffusionPipeline:
    """The loaded pipeline's modules (LoRA layers and all) as an img2img pipeline: diffusers'
    AutoPipeline's choice, or `factory` (a pipeline class) for a family it has no entry for."""
    pipe = derived(loaded, "img2img", factory or AutoPipelineForImage2Image)
    # Easel hands it the VAE's latents (gpu_worker/latents.py encodes them once); its image processor
    # passes latents through only when it knows their channel count, which Z-Image's and Chroma's
    # img2img pipelines leave at SD's 4: they would be resized as a picture.
    channels = getattr(pipe.vae.config, "latent_channels", None) or pipe.vae.config.z_dim
    if getattr(pipe.image_processor.config, "vae_latent_channels", channels) != channels:
        pipe.image_processor.register_to_config(vae_latent_channels=channels)
    return pipe


def inpainting(loaded: LoadedPipeline, factory=None) -> DiffusionPipeline:
    """The loaded pipeline's modules as an inpainting pipeline (a 4-channel UNet or a transformer: the
    masked latents are redrawn and the rest kept from the picture at every step, as A1111 does on
    normal models): AutoPipeline's choice, or `factory` for a family it has no entry for."""
    return derived(loaded, "inpaint", factory or AutoPipelineForInpainting)


def derived(loaded: LoadedPipeline, kind: str, factory) -> DiffusionPipeline:
    """Made once from the loaded modules, nothing copied or cast; it takes this batch's scheduler.
    `factory`: an AutoPipeline (its `from_pipe` leaves dtypes alone) or a pipeline class, built from
    the components themselves — DiffusionPipeline.from_pipe would cast every shared module to
    float32 (diffusers 0.42: `new_pipeline.to(dtype=torch_dtype or float32)`), the cached model's too."""
    if kind not in loaded.derived:
        auto = factory in (AutoPipelineForImage2Image, AutoPipelineForInpainting)
        loaded.derived[kind] = factory.from_pipe(loaded.pipeline) if auto else factory(**loaded.pipeline.components)
        loaded.derived[kind].set_progress_bar_config(disable=True)
    loaded.derived[kind].scheduler = loaded.pipeline.scheduler
    return loaded.derived[kind]


Held = dict[str, tuple[torch.dtype, torch.device]]


def held(loaded: LoadedPipeline) -> Held:
    """Each module's dtype and device (its first weight's), as a call starts."""
    states = {}
    for name, component in loaded.pipeline.components.items():
        weight = next(component.parameters(), None) if isinstance(component, torch.nn.Module) else None
        if weight is not None:
            states[name] = (weight.dtype, weight.device)
    return states


def restore(loaded: LoadedPipeline, before: Held) -> list[str]:
    """Modules a failed call left in another dtype or on another device (diffusers upcasts a VAE and
    casts it back only when the decode succeeds) put back as they were; their names. An offloaded
    pipeline's parts move by design, so only their dtypes are restored."""
    now = held(loaded)
    changed = []
    for name, (dtype, device) in before.items():
        if name not in now or now[name] == (dtype, device):
            continue
        module = loaded.pipeline.components[name]
        if loaded.offloaded:
            module.to(dtype=dtype)
        else:
            module.to(device, dtype)
        changed.append(name)
    return changed
