"""What a model family is to the worker, and the record a batch carries through it.

A family builds its pipeline from a file, refuses what it cannot do, prepares a batch (its input
picture, its mask, its prompts' words), draws the pictures of one pipeline call (prompt encoding,
call arguments, the hires fix), maps a step's latents to a preview, and knows which memory savers
it can switch on. The runner (gpu_worker/runner.py) calls these in order and knows no family by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from common.protocol import JobPart, LoadRequest, RunBatch
from gpu_worker import noise
from gpu_worker.controlnets import Control
from gpu_worker.loaded import LoadedPipeline
from gpu_worker.prompt_encoding import Conditioning
from gpu_worker.regional_attention import RegionalAttention
from gpu_worker.textual_inversion import EmbeddingCache, WordEmbeddings
from gpu_worker.upscale_models import UpscalerCache

StepCallback = Callable[[DiffusionPipeline, int, object, dict], dict]


@dataclass(frozen=True)
class Draw:
    """One pipeline call's share of a batch: its jobs, one picture per seed, in the batch's order."""

    jobs: tuple[JobPart, ...]

    @property
    def prompts(self) -> list[str]:
        return [job.prompt_of(i)[0] for job in self.jobs for i in range(len(job.seeds))]

    @property
    def negatives(self) -> list[str]:
        return [job.prompt_of(i)[1] for job in self.jobs for i in range(len(job.seeds))]

    @property
    def seeds(self) -> list[int]:
        return [seed for job in self.jobs for seed in job.seeds]

    @property
    def subseeds(self) -> list[int]:
        return [subseed for job in self.jobs for subseed in job.subseeds]

    def first_index(self) -> dict[str, int]:
        """Each job's first picture's place among the call's pictures."""
        places, offset = {}, 0
        for job in self.jobs:
            places[job.job_id] = offset
            offset += len(job.seeds)
        return places

    def one_by_one(self) -> list[Draw]:
        """A call per picture (the retry after running out of memory)."""
        return [
            Draw((replace(job, seeds=(seed,), subseeds=job.subseeds[i : i + 1], prompts=job.prompts[i : i + 1], negatives=job.negatives[i : i + 1]),))
            for job in self.jobs
            for i, seed in enumerate(job.seeds)
        ]

    def split(self, images: list[Image.Image]) -> dict[str, list[Image.Image]]:
        places = self.first_index()
        return {job.job_id: images[places[job.job_id] : places[job.job_id] + len(job.seeds)] for job in self.jobs}


@dataclass
class BatchRun:
    """One batch on its loaded pipeline: what the family prepared, and what the pass in progress
    tells the step callback."""

    batch: RunBatch
    loaded: LoadedPipeline
    upscalers: UpscalerCache
    pipe: DiffusionPipeline  # the pipeline pass one runs on (text, img2img or inpainting)
    img2img: DiffusionPipeline | None = None  # from a picture, and the hires fix's pass two
    inpaint: DiffusionPipeline | None = None  # a flow model's inpainting pipeline (SD's is `pipe`)
    init: Image.Image | None = None  # img2img: the input picture at the job's size (filled, with a mask)
    mask: Image.Image | None = None  # inpainting: the mask at the job's size, blurred
    original: Image.Image | None = None  # inpainting: the picture the overlay keeps
    paste: tuple[Image.Image, Image.Image, tuple[int, int, int, int]] | None = None  # Only masked
    nine: bool = False  # an inpainting checkpoint (a 9-channel UNet)
    words: WordEmbeddings | None = None  # the batch's textual-inversion words
    # The pass in progress: steps of earlier passes in this call and of this one, its size (for
    # previews), and its prompts' conditioning with the texts it was last set to (prompt editing).
    pass_steps: tuple[int, int] = (0, 0)
    size: tuple[int, int] = (0, 0)
    conditioning: Conditioning | None = None
    applied: tuple[str, ...] = ()
    regional: RegionalAttention | None = None  # the pass's regions (gpu_worker/regional_attention.py)
    latent_dtype: torch.dtype | None = None  # the starting latents' (None: the model's)
    references: tuple[Image.Image, ...] = ()  # an edit's input pictures (common/editing.py)
    control: Control | None = None  # the batch's ControlNet units (gpu_worker/controlnets.py)
    last_preview: float = -math.inf  # when (time.perf_counter) the batch's last preview was taken

    def hires_upscaler(self) -> object:
        """The hires fix's upscaler: a model from the cache, or an A1111 name."""
        model = self.batch.hires_model
        return self.upscalers.get(model.path, model.sha256) if model else self.batch.parameters.hires_upscaler


class Family:
    """The worker's side of a model family; one instance per row of FAMILIES."""

    name: str = ""
    flow: bool = False  # denoises by flow matching (a transformer, no UNet)
    gpu_dtype: torch.dtype = torch.float16
    fp8_storage: bool = False  # its denoiser may be stored in fp8 when the card is too small (gpu_worker/placement.py)
    edits: bool = False  # has an edit model (common/editing.py): its batches may carry input pictures
    controls: bool = False  # runs ControlNet units (gpu_worker/controlnets.py)
    latents_in_float32: bool = False  # its pipeline steps float32 latents whatever the model runs in

    def build(self, request: LoadRequest, dtype: torch.dtype, device: str) -> DiffusionPipeline:
        """The pipeline for a file of this family, on the CPU (or sharing parts already on `device`)."""
        raise NotImplementedError

    def refuses(self, batch: RunBatch) -> str | None:
        """Why this family cannot run the batch, in one line for the person; None when it can."""
        return None

    def writes_distilled_cfg(self, batch: RunBatch) -> bool:
        """Whether the infotext carries Forge's "Distilled CFG Scale" (a guidance input was used)."""
        return False

    def prepare(self, run: BatchRun, embeddings: EmbeddingCache) -> None:
        """The batch's pictures, mask and words on `run`; `run.pipe` set to the pipeline pass one uses."""
        raise NotImplementedError

    def draws(self, run: BatchRun, jobs: list[JobPart]) -> list[Draw]:
        """The pipeline calls that serve the batch's jobs: one, unless the family needs several."""
        return [Draw(tuple(jobs))]

    def draw(self, run: BatchRun, draw: Draw, callback: StepCallback) -> list[Image.Image]:
        """One call's pictures: pass one and, with the hires fix, pass two."""
        raise NotImplementedError

    def preview(self, run: BatchRun, pipe: DiffusionPipeline, latents: torch.Tensor) -> Image.Image:
        """One picture's preview from its latents at a step."""
        raise NotImplementedError

    @contextmanager
    def memory_savers(self, pipe: DiffusionPipeline) -> Iterator[None]:
        """Savers on for a retry after running out of memory, off again afterwards."""
        pipe.vae.enable_tiling()
        try:
            yield
        finally:
            pipe.vae.disable_tiling()


def latent_shape(pipe: DiffusionPipeline, size: tuple[int, int]) -> tuple[int, int, int]:
    """One picture's latent shape at a size (Flux's grid even, for its 2x2 tokens)."""
    scale = pipe.vae_scale_factor
    width, height = size
    if getattr(pipe, "_pack_latents", None) is not None:
        width, height = width // (scale * 2) * scale * 2, height // (scale * 2) * scale * 2
    channels = getattr(pipe.vae.config, "latent_channels", None) or pipe.vae.config.z_dim  # a video VAE's
    if _patchified(pipe):  # FLUX.2 draws its noise as 2x2 patches of latents (its prepare_latents)
        return (channels * 4, height // (scale * 2), width // (scale * 2))
    return (channels, height // scale, width // scale)


def _patchified(pipe: DiffusionPipeline) -> bool:
    """Whether the pipeline's latents are 2x2 patches, packed by its own prepare_latents (FLUX.2)."""
    return getattr(pipe, "_patchify_latents", None) is not None


def first_noise(run: BatchRun, draw: Draw, pipe: DiffusionPipeline, size: tuple[int, int]) -> tuple[torch.Tensor, noise.PictureNoise]:
    """The call's first draw (source, variation seed and seed resize applied; float32 on the CPU)
    and the pictures' generators for the step noise after it (gpu_worker/noise.py)."""
    p = run.batch.parameters
    resize = tuple(int(n) for n in p.seed_resize_from.split("x")) if p.seed_resize_from else None
    return noise.initial_noise(
        p.rng, run.loaded.device, latent_shape(pipe, size), draw.seeds, draw.subseeds or None,
        p.subseed_strength, resize, pipe.vae_scale_factor * (2 if _patchified(pipe) else 1), p.ensd,  # type: ignore[arg-type]
    )  # fmt: skip


def noise_inputs(run: BatchRun, draw: Draw, pipe: DiffusionPipeline, size: tuple[int, int], from_text: bool) -> dict:
    """A diffusers-sampled call's noise, as A1111 draws it: each picture's generator, and from text,
    the starting latents themselves (the source, variation seed and seed resize apply there; a call
    from a picture draws its noise from the generators)."""
    p, device = run.batch.parameters, run.loaded.device
    if not from_text:
        return {"generator": noise.generators(p.rng if not noise.computed(p.rng, device) else "CPU", device, draw.seeds)}
    start, streams = first_noise(run, draw, pipe, size)
    latents = start.to(pipe._execution_device, run.latent_dtype or run.loaded.dtype)
    if getattr(pipe, "_pack_latents", None) is not None and not _patchified(pipe):
        latents = pipe._pack_latents(latents, *latents.shape)
    return {"latents": latents, "generator": streams.torch_generators()}
