"""SD1, SD2 and SDXL (epsilon, v-prediction, zero-terminal-SNR and EDM models): a UNet and CLIP.

Prompts are read as A1111 reads them — emphasis, BREAK, chunks past 77 tokens, clip skip, textual
inversion words, and prompt editing / alternation, whose embeddings the step callback swaps in as
they change (gpu_worker/prompt_encoding.py). From a picture, with a mask (A1111's inpainting
options), on inpainting checkpoints (9-channel UNets), and the hires fix from a latent or a picture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from common.protocol import JobPart, LoadRequest
from gpu_worker.controlnets import controlled
from gpu_worker.families.base import BatchRun, Draw, Family, StepCallback, noise_inputs
from gpu_worker.families.sd_build import build_sd
from gpu_worker.families.sd_passes import a1111_scheduler, begin_pass
from gpu_worker.hires import upscale
from gpu_worker.init_images import prepare_init, prepare_mask
from gpu_worker.inpaint_options import masked_picture_latents, masked_start, overlay, prepare_inpainting
from gpu_worker.latents import decode_pictures, encode, encode_pictures
from gpu_worker.loaded import image_to_image, inpainting
from gpu_worker.previews import latents_to_images, vae_previews
from gpu_worker.prompt_encoding import Conditioning, chunks_needed
from gpu_worker.regional_attention import RegionalAttention, plans_for, regional_attention
from gpu_worker.samplers import make_scheduler
from gpu_worker.textual_inversion import EmbeddingCache

# The cheap preview's linear map from latents to RGB (A1111's "Approx cheap"), from ComfyUI's
# latent_formats (SD15 and SDXL), fitted to each VAE's latent space: (factors, bias).
SD_PREVIEW = (
    [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
    [0.0, 0.0, 0.0],
)
SDXL_PREVIEW = (
    [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
    [0.1084, -0.0175, -0.0011],
)


class StableDiffusion(Family):
    controls = True

    def __init__(self, name: str, preview_map: tuple[list[list[float]], list[float]]) -> None:
        self.name = name
        self.preview_map = preview_map

    def build(self, request: LoadRequest, dtype: torch.dtype, device: str) -> DiffusionPipeline:
        return build_sd(request, dtype)

    def prepare(self, run: BatchRun, embeddings: EmbeddingCache) -> None:
        batch, loaded = run.batch, run.loaded
        pipe = loaded.pipeline
        encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
        run.words = embeddings.for_batch(batch.embeddings, encoders)
        # An inpainting checkpoint (9-channel UNet) is loaded as its inpainting pipeline, which serves
        # every kind of job: from text, from a picture, with a mask, and the hires fix's pass two.
        run.nine = pipe.unet.config.in_channels == 9
        # A1111's own samplers start every pass from latents they make (gpu_worker/families/sd_passes.py),
        # so the text pipeline serves pictures and masks too; diffusers' need its img2img and inpainting ones.
        own = batch.a1111_sampling
        if own:
            pipe.scheduler = a1111_scheduler(loaded, batch.parameters.sampler)
        else:
            pipe.scheduler = make_scheduler(loaded.base_scheduler_config, batch.parameters.sampler, batch.parameters.schedule)
        if batch.init_png is not None or batch.parameters.hires_scale:
            run.img2img = pipe if run.nine or own else image_to_image(loaded)
        run.pipe = pipe
        if batch.init_png is not None:
            run.init = prepare_init(batch.init_png, batch.width, batch.height, batch.parameters.resize_mode)
            run.pipe = run.img2img
        if batch.init_png is not None and batch.mask_png is not None:
            run.mask = prepare_mask(
                batch.mask_png, batch.width, batch.height, batch.parameters.resize_mode, batch.parameters.mask_blur
            )
            run.pipe = pipe if run.nine or own else inpainting(loaded)
            prepare_inpainting(run)
        if run.control is not None:
            run.control.scale_factor = pipe.vae_scale_factor
            if run.paste is not None:  # Only masked: the maps' region too
                run.control.crop(run.paste[2], (batch.width, batch.height))

    def draws(self, run: BatchRun, jobs: list[JobPart]) -> list[Draw]:
        """Jobs whose prompts need different numbers of 77-token chunks run in separate pipeline
        calls: padding a short prompt with empty chunks would change its picture."""
        groups: dict[int, list[JobPart]] = {}
        for job in jobs:
            texts = [job.prompt_of(i) for i in range(len(job.seeds))]
            drawn = [(p.prompt, p.negative) if p else t for p, t in zip(plans_for(run.batch.parameters.regions, texts), texts, strict=True)]
            chunks = max(chunks_needed(run.pipe, *text, run.batch.prompt_steps[0], run.words) for text in drawn)
            groups.setdefault(chunks, []).append(job)
        return [Draw(tuple(group)) for group in groups.values()]

    def draw(self, run: BatchRun, draw: Draw, callback: StepCallback) -> list[Image.Image]:
        batch, n = run.batch, len(draw.seeds)
        run.pass_steps, run.size = (0, batch.run_steps), (batch.width, batch.height)
        first = _sample(run, run.pipe, draw, callback, batch.parameters.steps, _pass_one_inputs(run, draw))
        if run.mask is not None:  # A1111's overlay: outside the (blurred) mask, the picture as it was
            return overlay(run, decode_pictures(run.pipe, first))
        if not batch.parameters.hires_scale:
            return decode_pictures(run.pipe, first)
        # Hires fix (A1111): pass one's result enlarged, then redrawn at `hires_denoise` by img2img.
        run.pass_steps, run.size = (batch.run_steps, batch.hires_run_steps), batch.hires_size
        enlarged = upscale(run.pipe, first, batch.hires_size, run.hires_upscaler())
        if not isinstance(enlarged, torch.Tensor):  # a picture upscaler's pictures
            enlarged = encode_pictures(run.pipe, enlarged)
        steps = batch.parameters.hires_steps or batch.parameters.steps
        if batch.a1111_sampling:
            inputs = {"width": batch.hires_size[0], "height": batch.hires_size[1]}
            if run.nine:
                inputs |= {"image": enlarged, "strength": 1.0} | _full_mask(run.pipe, batch.hires_size, n)
            start = begin_pass(run, draw, run.img2img, batch.hires_size, steps, enlarged, batch.parameters.hires_denoise, exact=True)
            return decode_pictures(run.img2img, _sample(run, run.img2img, draw, callback, steps, inputs | {"latents": start}, hires=True))
        inputs = {"image": enlarged, "strength": batch.parameters.hires_denoise}
        if run.nine:  # redrawn everywhere: a full mask over a grey masked picture, as A1111's
            inputs |= _full_mask(run.pipe, batch.hires_size, n)
        return decode_pictures(run.img2img, _sample(run, run.img2img, draw, callback, steps, inputs, hires=True))

    def preview(self, run: BatchRun, pipe: DiffusionPipeline, latents: torch.Tensor) -> Image.Image:
        # The demo model's small VAE decodes a 64 px preview in less than a step: A1111's "Full".
        if (run.batch.load.pipeline_config or "").startswith("demo-"):
            return vae_previews(pipe, latents, *reversed(run.size))[0]
        return latents_to_images(latents, *self.preview_map)[0]

    @contextmanager
    def memory_savers(self, pipe: DiffusionPipeline) -> Iterator[None]:
        pipe.enable_attention_slicing()
        try:
            with super().memory_savers(pipe):
                yield
        finally:
            pipe.disable_attention_slicing()


def _pass_one_inputs(run: BatchRun, draw: Draw) -> dict:
    """Pass one's size, picture, strength and mask, as the job asks; pictures as latents (the
    pipelines take latents as they are, and every VAE call goes through gpu_worker/latents.py)."""
    if run.batch.a1111_sampling:
        return _a1111_pass_one(run, draw)
    batch, n = run.batch, len(draw.seeds)
    if run.nine:
        inputs = _inpainting_model_inputs(run, n)
    elif run.init is None:
        inputs = {"width": batch.width, "height": batch.height}
    else:  # img2img: the picture sets the size; strength says how much of it is redrawn
        inputs = {"image": encode_pictures(run.pipe, [run.init]).repeat(n, 1, 1, 1), "strength": batch.parameters.strength}
    if run.mask is not None and not run.nine:  # inpainting: only where the mask is white
        # A UNet of 4 channels never reads the masked picture, but the pipeline, given latents,
        # needs latents there too (it would mask the latents by a picture-sized mask).
        inputs |= {"mask_image": [run.mask] * n, "width": batch.width, "height": batch.height}
        inputs["masked_image_latents"] = inputs["image"]
    if run.mask is not None and batch.parameters.masked_content in ("latent noise", "latent nothing"):
        inputs["image"] = _masked_start(run, draw)
        # The masked picture's latent, which the pipeline cannot make from a latent start (an
        # inpainting checkpoint reads it).
        inputs["masked_image_latents"] = masked_picture_latents(run.pipe, run.init, run.mask, n)
    return inputs


def _masked_start(run: BatchRun, draw: Draw) -> torch.Tensor:
    p = run.batch.parameters
    assert run.init is not None and run.mask is not None
    return masked_start(run.pipe, run.init, run.mask, p.masked_content, draw.seeds, p.rng, run.loaded.device)


def _a1111_pass_one(run: BatchRun, draw: Draw) -> dict:
    """Pass one under A1111's own samplers: the text pipeline (or an inpainting checkpoint's) given
    the starting latents; from a picture, its latents (or its masked start) noised to the window's
    first sigma, and with a mask, the original kept outside it."""
    batch, n = run.batch, len(draw.seeds)
    size = (batch.width, batch.height)
    inputs = _inpainting_model_inputs(run, n) | {"strength": 1.0} if run.nine else {"width": size[0], "height": size[1]}
    if run.init is None:
        return inputs | {"latents": begin_pass(run, draw, run.pipe, size, batch.parameters.steps)}
    if run.mask is not None and batch.parameters.masked_content in ("latent noise", "latent nothing"):
        picture = _masked_start(run, draw)
        if run.nine:
            inputs["masked_image_latents"] = masked_picture_latents(run.pipe, run.init, run.mask, n)
    else:
        picture = encode_pictures(run.pipe, [run.init])
    start = begin_pass(run, draw, run.pipe, size, batch.parameters.steps, picture, batch.parameters.strength, mask=run.mask)
    return inputs | {"latents": start}


def _sample(
    run: BatchRun,
    pipe: DiffusionPipeline,
    draw: Draw,
    callback: StepCallback,
    steps: int,
    inputs: dict,
    hires: bool = False,
) -> torch.Tensor:
    """One pass; its latents, which the caller decodes (or enlarges for the hires fix). Prompt
    editing follows A1111's schedule for the pass (RunBatch.prompt_steps), from model call 0."""
    batch = run.batch
    first, second = batch.prompt_steps
    plans = plans_for(batch.parameters.regions, list(zip(draw.prompts, draw.negatives, strict=True)))
    prompts = [p.prompt if p else text for p, text in zip(plans, draw.prompts, strict=True)]
    negatives = [p.negative if p else text for p, text in zip(plans, draw.negatives, strict=True)]
    run.conditioning = Conditioning(
        pipe, prompts, negatives, first, batch.parameters.clip_skip, run.words, second if hires else None, plans
    )
    run.applied = run.conditioning.key(0)
    run.regional = None
    if run.conditioning.regional:  # the Regional Prompter's Attention mode (gpu_worker/regional_attention.py)
        width, height = run.size  # this pass's
        run.regional = RegionalAttention((height // pipe.vae_scale_factor, width // pipe.vae_scale_factor))
        run.regional.set(*run.conditioning.regions(0))
    if run.control is not None:
        run.control.begin(len(draw.seeds), hires)
    with regional_attention(pipe.unet, run.regional) if run.regional else nullcontext(), controlled(pipe.unet, run.control):
        return _call(run, pipe, draw, callback, steps, inputs)


def _call(run: BatchRun, pipe: DiffusionPipeline, draw: Draw, callback: StepCallback, steps: int, inputs: dict) -> torch.Tensor:
    batch = run.batch
    assert run.conditioning is not None
    return pipe(
        **run.conditioning.inputs(0),
        **inputs,
        **(run.control.pipeline_inputs() if run.control is not None else {}),
        num_inference_steps=steps,
        guidance_scale=batch.parameters.cfg,
        **({"guidance_rescale": batch.parameters.cfg_rescale} if batch.parameters.cfg_rescale else {}),
        **({} if "latents" in inputs else noise_inputs(run, draw, pipe, (inputs.get("width", batch.width), inputs.get("height", batch.height)), "image" not in inputs)),
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", *run.conditioning.tensor_inputs()],
        output_type="latent",
    ).images


def _inpainting_model_inputs(run: BatchRun, n: int) -> dict:
    """Pass one's inputs for an inpainting checkpoint, as A1111 feeds one (processing.py
    `txt2img_image_conditioning` / `img2img_image_conditioning`): from text, a grey picture under a
    full mask, redrawn from pure noise; from a picture, that picture under a full mask (or the
    person's mask) at the job's denoising strength."""
    batch, pipe = run.batch, run.pipe
    size = (batch.width, batch.height)
    picture = run.init if run.init is not None else Image.new("RGB", size, (128, 128, 128))
    mask = run.mask if run.mask is not None else Image.new("L", size, 255)
    strength = batch.parameters.strength if run.init is not None else 1.0
    return {
        "image": encode_pictures(pipe, [picture]).repeat(n, 1, 1, 1),
        "mask_image": [mask] * n,
        "masked_image_latents": masked_picture_latents(pipe, picture, mask, n),
        "strength": strength,
        "width": size[0],
        "height": size[1],
    }


def _full_mask(pipe: DiffusionPipeline, size: tuple[int, int], n: int) -> dict:
    """Pass two on an inpainting checkpoint: redraw everywhere, the masked picture all grey."""
    width, height = size
    grey = encode(pipe.vae, torch.zeros(1, 3, height, width, device=pipe.vae.device, dtype=pipe.vae.dtype))
    return {
        "mask_image": [Image.new("L", size, 255)] * n,
        "masked_image_latents": grey.repeat(n, 1, 1, 1),
        "width": width,
        "height": height,
    }


SD1 = StableDiffusion("sd1", SD_PREVIEW)
SD2 = StableDiffusion("sd2", SD_PREVIEW)
SDXL = StableDiffusion("sdxl", SDXL_PREVIEW)
