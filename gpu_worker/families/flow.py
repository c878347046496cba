"""What the flow-matching families (Flux, SD3) share: one pipeline call for the batch, prompts read
as A1111-style prompts (gpu_worker/flow_prompts.py), from a picture and with the hires fix through
the same modules as an image-to-image pipeline (the hires fix enlarges a picture, never a latent),
and previews through the VAE (no linear map is bundled for their 16-channel latents)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from common.protocol import RunBatch
from gpu_worker.controlnets import controlled_flux
from gpu_worker.families.base import BatchRun, Draw, Family, StepCallback, noise_inputs
from gpu_worker.hires import enlarge
from gpu_worker.init_images import prepare_init, prepare_mask, read_references
from gpu_worker.inpaint_options import overlay, prepare_inpainting
from gpu_worker.latents import decode_pictures, encode_pictures
from gpu_worker.loaded import image_to_image, inpainting
from gpu_worker.previews import latents_to_images, vae_previews
from gpu_worker.samplers import make_scheduler
from gpu_worker.textual_inversion import EmbeddingCache


class FlowFamily(Family):
    flow = True
    gpu_dtype = torch.bfloat16  # as BFL, SAI and ComfyUI run them (T5 overflows fp16)
    fp8_storage = True  # as Forge stores FLUX.1 for 12-16 GB cards
    # The cheap preview's 16 x 3 map from latents to RGB and its bias (ComfyUI's latent_formats),
    # for a model whose VAE must not be woken for a preview (offloaded: it would drag the
    # transformer off the device every few steps).
    preview_map: tuple[list[list[float]], list[float]] = ([], [])
    # Its img2img pipeline class where diffusers' AutoPipelineForImage2Image has no entry for it
    # (Z-Image, Chroma, Qwen-Image): built from the loaded modules.
    img2img_pipeline: type | None = None
    inpaint_pipeline: type | None = None  # likewise for inpainting

    def text_inputs(self, run: BatchRun, draw: Draw) -> dict:
        """The pipeline's guidance and text arguments for the call's prompts."""
        raise NotImplementedError

    def edit(self, run: BatchRun, draw: Draw, callback: StepCallback, arguments: dict, size: tuple[int, int]) -> list[Image.Image]:
        """Pass one of an edit (common/editing.py): the input pictures changed as the prompt says."""
        raise NotImplementedError

    def refuses(self, batch: RunBatch) -> str | None:
        if batch.embeddings:
            return f"{batch.load.name}: embeddings are not supported on it yet"
        if batch.mask_png is not None and batch.parameters.masked_content in ("latent noise", "latent nothing"):
            return f"{batch.load.name}: masked content {batch.parameters.masked_content} is for SD checkpoints; choose original or fill"
        if batch.parameters.regions:
            return f"{batch.load.name}: regional prompting works on SD1, SD2 and SDXL checkpoints only"
        return None

    def writes_distilled_cfg(self, batch: RunBatch) -> bool:
        return batch.parameters.distilled_cfg > 0  # the bot sends 0 where the model has no guidance input (schnell)

    def prepare(self, run: BatchRun, embeddings: EmbeddingCache) -> None:
        batch, loaded = run.batch, run.loaded
        run.pipe = loaded.pipeline
        run.pipe.scheduler = make_scheduler(
            loaded.base_scheduler_config, batch.parameters.sampler, batch.parameters.schedule
        )
        if batch.init_png is not None or batch.parameters.hires_scale:
            run.img2img = image_to_image(loaded, self.img2img_pipeline)
        if batch.init_png is not None:
            run.init = prepare_init(batch.init_png, batch.width, batch.height, batch.parameters.resize_mode)
        if batch.init_png is not None and batch.mask_png is not None:
            p = batch.parameters
            run.mask = prepare_mask(batch.mask_png, batch.width, batch.height, p.resize_mode, p.mask_blur)
            run.inpaint = inpainting(loaded, self.inpaint_pipeline)
            prepare_inpainting(run)  # inpaint area and masked content, as A1111 (gpu_worker/inpaint_options.py)
            if run.control is not None and run.paste is not None:  # Only masked: the maps' region too
                run.control.crop(run.paste[2], (batch.width, batch.height))
        run.references = read_references(batch.edit_pngs)
        run.latent_dtype = torch.float32 if self.latents_in_float32 else None

    def draw(self, run: BatchRun, draw: Draw, callback: StepCallback) -> list[Image.Image]:
        batch, n = run.batch, len(draw.seeds)
        arguments = self.text_inputs(run, draw)
        run.pass_steps = (0, batch.run_steps)
        size = (batch.width, batch.height)
        if run.references:
            first = self.edit(run, draw, callback, arguments, size)
        elif run.mask is not None:  # inpainting: the pipeline redraws under the mask; A1111's overlay keeps the rest
            inpainted = call_pipeline(
                run,
                run.inpaint,
                draw,
                callback,
                arguments,
                batch.parameters.steps,
                size,
                image=[run.init] * n,
                mask_image=[run.mask] * n,
                strength=batch.parameters.strength,
            )
            return overlay(run, inpainted)
        elif run.init is not None:  # img2img: strength says how much of the picture is redrawn
            first = call_pipeline(
                run,
                run.img2img,
                draw,
                callback,
                arguments,
                batch.parameters.steps,
                size,
                image=repeated(encode_pictures(run.img2img, [run.init]), n),
                strength=batch.parameters.strength,
            )
        else:
            first = call_pipeline(run, run.pipe, draw, callback, arguments, batch.parameters.steps, size)
        if not batch.parameters.hires_scale:
            return first
        # Hires fix (A1111): pass one's picture enlarged by a picture upscaler, redrawn by img2img.
        run.pass_steps = (batch.run_steps, batch.hires_run_steps)
        enlarged = enlarge(first, batch.hires_size, run.hires_upscaler())
        steps = batch.parameters.hires_steps or batch.parameters.steps
        return call_pipeline(
            run,
            run.img2img,
            draw,
            callback,
            arguments,
            steps,
            batch.hires_size,
            image=encode_pictures(run.img2img, enlarged),
            strength=batch.parameters.hires_denoise,
        )

    def preview(self, run: BatchRun, pipe: DiffusionPipeline, latents: torch.Tensor) -> Image.Image:
        width, height = run.size  # this pass's (the hires fix's second is larger)
        if run.loaded.offloaded:
            if latents.ndim == 3:  # Flux packs 2x2 patches into tokens: a reshape, no model
                latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
            if latents.ndim == 5:  # a video VAE's latents (Qwen-Image): the one frame
                latents = latents[:, :, 0]
            return latents_to_images(latents, *self.preview_map)[0]
        return vae_previews(pipe, latents, height, width)[0]


def repeated(latents: torch.Tensor, n: int) -> torch.Tensor:
    """One picture's latents for each of `n` pictures (a video VAE's have a frame axis too)."""
    return latents.repeat(n, *(1,) * (latents.ndim - 1))


def call_pipeline(
    run: BatchRun,
    pipe: DiffusionPipeline,
    draw: Draw,
    callback: StepCallback,
    arguments: dict,
    steps: int,
    size: tuple[int, int],
    **inputs: object,
) -> list[Image.Image]:
    run.size = size
    if run.control is not None:
        run.control.begin(len(draw.seeds), run.pass_steps[0] > 0)
        run.control.encode_for(pipe, size)
    with controlled_flux(pipe.transformer, run.control) if run.control is not None else nullcontext():
        latents = _call(pipe, run, draw, callback, arguments, steps, size, inputs)
    if latents.ndim == 3:  # Flux packs 2x2 patches into tokens
        latents = pipe._unpack_latents(latents, size[1], size[0], pipe.vae_scale_factor)
    return decode_pictures(pipe, latents)


def _call(pipe, run: BatchRun, draw: Draw, callback: StepCallback, arguments: dict, steps: int, size: tuple[int, int], inputs: dict) -> torch.Tensor:
    return pipe(
        width=size[0],
        height=size[1],
        num_inference_steps=steps,
        **noise_inputs(run, draw, pipe, size, "image" not in inputs),
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents"],
        output_type="latent",
        **arguments,
        **inputs,
    ).images
