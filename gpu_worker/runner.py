"""Run one batch: load (through the cache), denoise with progress and previews, render PNGs.

Every outcome is an event: JobDone / JobCancelled per job, or BatchFailed; BatchFinished always
closes the batch so the service knows the worker is free.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from common.infotext import build_infotext
from common.protocol import (
    FLOW_FAMILIES,
    BatchFailed,
    BatchFinished,
    BatchLoading,
    BatchProgress,
    ImageResult,
    JobCancelled,
    JobDone,
    JobPreview,
    RunBatch,
)
from common.upscaler_detection import UpscalerFileError
from gpu_worker.cache import PipelineCache
from gpu_worker.flow_prompts import flux_inputs, sd3_inputs
from gpu_worker.hires import enlarge, upscale
from gpu_worker.init_images import prepare_init, prepare_mask
from gpu_worker.inpaint_options import crop_region, fill_masked, masked_picture_latents, masked_start
from gpu_worker.latents import encode
from gpu_worker.loader import CheckpointLoadError, image_to_image, inpainting
from gpu_worker.loras import LoraError, TaintedPipeline, apply_loras
from gpu_worker.previews import decodes_previews, latents_to_images, png_bytes, vae_previews
from gpu_worker.prompt_encoding import Conditioning, chunks_needed, words_used
from gpu_worker.render import png_with_infotext
from gpu_worker.safety import NudityScorer, Scores
from gpu_worker.samplers import make_scheduler
from gpu_worker.textual_inversion import EmbeddingCache, EmbeddingError, WordEmbeddings
from gpu_worker.upscale_models import UpscalerCache
from gpu_worker.vaes import VaeCache, VaeError

log = logging.getLogger(__name__)
VERSION = "Easel 0.1.0"

Send = Callable[[object], None]


class BatchCancelled(Exception):
    pass


class OutOfMemory(Exception):
    pass


def infotext_for(batch: RunBatch, prompt: str, negative: str, seed: int, ti_hashes: str = "") -> str:
    return build_infotext(
        prompt,
        negative,
        {
            "Steps": batch.steps,
            "Sampler": batch.sampler,
            "Schedule type": None if batch.schedule == "Automatic" else batch.schedule,
            "CFG scale": batch.cfg,
            # Forge writes Flux dev's guidance input beside the CFG scale (1 unless true CFG runs too).
            "Distilled CFG Scale": f"{batch.distilled_cfg:g}" if _distilled(batch) else None,
            "CFG Rescale φ": f"{batch.cfg_rescale:g}" if batch.cfg_rescale else None,
            "Seed": seed,
            "Size": f"{batch.width}x{batch.height}",
            "Model hash": batch.load.sha256[:10] or None,
            "Model": batch.model_name or batch.load.name,
            # A1111 processing.py: after the model, the VAE that replaced its own (sha256[:10], file name).
            "VAE hash": batch.vae.sha256[:10] if batch.vae else None,
            "VAE": batch.vae.name if batch.vae else None,
            # Forge's names for the separate parts a transformer-only file ran with (file stems).
            **{f"Module {i}": Path(use.name).stem for i, use in enumerate(_modules(batch), start=1)},
            "Denoising strength": _denoising(batch),
            "Mask blur": batch.mask_blur if batch.init_image is not None and batch.mask is not None else None,
            **_inpaint_parameters(batch),
            "Clip skip": batch.clip_skip if batch.clip_skip > 1 else None,
            # A1111 processing.py (txt2img with hires fix): its extra generation parameters.
            "Hires upscale": f"{batch.hires_scale:g}" if batch.hires_scale else None,
            "Hires steps": batch.hires_steps if batch.hires_scale and batch.hires_steps else None,
            "Hires upscaler": batch.hires_upscaler if batch.hires_scale else None,
            # A1111 extensions-builtin/Lora/extra_networks_lora.py: "alias: shorthash", the alias without : and ,
            "Lora hashes": ", ".join(f"{a1111_alias(use.name)}: {use.short_hash}" for use in batch.loras) or None,
            "TI hashes": ti_hashes or None,  # A1111 modules/sd_hijack.py: "name: shorthash" of the words used
            "Version": VERSION,
        },
    )


def _modules(batch: RunBatch) -> list:
    """A transformer-only file's parts as Forge lists them: the VAE, then the text encoders."""
    order = {"vae": 0, "clip_l": 1, "clip_g": 2, "t5xxl": 3}
    return sorted(batch.load.components, key=lambda use: order.get(use.role, 4))


def _distilled(batch: RunBatch) -> bool:
    """Flux dev's guidance input was used (the bot sends 0 for schnell, which has none)."""
    return batch.load.family in FLOW_FAMILIES and batch.distilled_cfg > 0


def _inpaint_parameters(batch: RunBatch) -> dict[str, object]:
    """A1111 processing.py writes these only when they are not the defaults (original, whole picture)."""
    if batch.init_image is None or batch.mask is None:
        return {}
    return {
        "Masked content": batch.masked_content if batch.masked_content != "original" else None,
        "Inpaint area": "Only masked" if batch.only_masked else None,
        "Masked area padding": batch.mask_padding if batch.only_masked else None,
    }


def a1111_alias(name: str) -> str:
    """A name as A1111 writes it in `Lora hashes` and `TI hashes`: without the list's `:` and `,`."""
    return name.replace(":", "").replace(",", "")


def _denoising(batch: RunBatch) -> float | None:
    """A1111's "Denoising strength": the hires pass's, else img2img's; none for plain txt2img."""
    if batch.hires_scale:
        return batch.hires_denoise
    return batch.strength if batch.init_image is not None else None


def _result(image: Image.Image, seed: int, infotext: str, scores: Scores) -> ImageResult:
    return ImageResult(png_with_infotext(image, infotext), seed, infotext, scores.score, scores.labels)


class BatchRunner:
    def __init__(self, device: str, cache: PipelineCache, send: Send, is_cancelled: Callable[[str], bool]) -> None:
        self.device = device
        self.cache = cache
        self.send = send
        self.is_cancelled = is_cancelled
        self.steps_per_second = 0.0
        # The conditioning of the pipeline call in progress, and the texts it was last set to.
        self._conditioning: Conditioning | None = None
        self._applied: tuple[str, ...] = ()
        self.embeddings = EmbeddingCache()
        self._words: WordEmbeddings | None = None  # the batch's textual-inversion words
        self._init: Image.Image | None = None  # img2img: the batch's input picture, at its size
        self._mask: Image.Image | None = None  # inpainting: its mask, at its size, blurred
        self._img2img: DiffusionPipeline | None = None  # the cached pipeline's modules, for img2img and hires
        self._pass = (0, 0)  # (steps of earlier passes in this call, steps of this pass), for progress
        self._model_passes = 0
        self._nine = False  # the batch's checkpoint is an inpainting one (a 9-channel UNet)
        self._original: Image.Image | None = None  # inpainting: the picture the overlay keeps
        self._paste: tuple[Image.Image, Image.Image, tuple[int, int, int, int]] | None = None  # Only masked
        self._size = (0, 0)  # a flow model's pass in progress: its (width, height), for previews
        self.upscalers = UpscalerCache(torch.device(device))
        self.vaes = VaeCache()
        self.safety = NudityScorer()
        # Previews are checked beside the denoising, on a thread of their own (ONNX Runtime lets go of
        # the GIL): on a GPU the check then costs the steps nothing. One step's previews at a time; a
        # step whose previews come while the last are still being checked shows none.
        self._checking = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview-check")
        self._checked: Future[None] | None = None

    def run(self, batch: RunBatch) -> None:
        active = [job for job in batch.jobs if not self.is_cancelled(job.job_id)]
        for job in batch.jobs:
            if job not in active:
                self.send(JobCancelled(batch.batch_id, job.job_id))
        try:
            if active:
                self._run(batch, active)
        except BatchCancelled:
            self._previews_sent()
            for job in active:
                self.send(JobCancelled(batch.batch_id, job.job_id))
        except (CheckpointLoadError, LoraError, EmbeddingError, OutOfMemory, UpscalerFileError, VaeError) as e:
            self._previews_sent()
            self.send(BatchFailed(batch.batch_id, str(e), tuple(j.job_id for j in active)))
        except Exception as e:  # the worker must survive anything one batch does
            log.exception("batch %s failed", batch.batch_id)
            self._previews_sent()
            self.send(
                BatchFailed(
                    batch.batch_id, f"generation failed: {type(e).__name__}: {e}", tuple(j.job_id for j in active)
                )
            )
        finally:
            self._previews_sent()
            self.send(BatchFinished(batch.batch_id, tuple(self.cache.loaded_keys()), self.steps_per_second))

    def _run(self, batch: RunBatch, jobs: list) -> None:
        if batch.load.format != "diffusers" and not Path(batch.load.path).is_file():
            raise CheckpointLoadError(f"{batch.load.name}: the file is no longer on disk")
        self.send(BatchLoading(batch.batch_id, batch.load.name, self.cache.where(batch.load.cache_key)))
        started = time.perf_counter()
        loaded, source = self.cache.get(batch.load)
        try:
            if apply_loras(loaded, batch.loras):
                self.cache.remeasure(batch.load.cache_key)
        except TaintedPipeline:
            self.cache.discard(batch.load.cache_key)
            raise
        self.vaes.apply(loaded, batch.vae)
        load_seconds = time.perf_counter() - started
        if batch.load.family in FLOW_FAMILIES:
            self._run_flow(batch, jobs, loaded, source, load_seconds)
            return
        pipe = loaded.pipeline
        encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
        self._words = words = self.embeddings.for_batch(batch.embeddings, encoders)
        pipe.scheduler = make_scheduler(loaded.base_scheduler_config, batch.sampler, batch.schedule)
        self._init, self._mask = None, None
        # An inpainting checkpoint (9-channel UNet) is loaded as its inpainting pipeline, which serves
        # every kind of job: from text, from a picture, with a mask, and the hires fix's pass two.
        self._nine = pipe.unet.config.in_channels == 9
        needs_img2img = batch.init_image is not None or batch.hires_scale
        self._img2img = (pipe if self._nine else image_to_image(loaded)) if needs_img2img else None
        if batch.init_image is not None:
            self._init = prepare_init(batch.init_image, batch.width, batch.height, batch.resize_mode)
            pipe = self._img2img
        self._original, self._paste = None, None
        if batch.init_image is not None and batch.mask is not None:
            self._mask = prepare_mask(batch.mask, batch.width, batch.height, batch.resize_mode, batch.mask_blur)
            pipe = loaded.pipeline if self._nine else inpainting(loaded)
            self._prepare_inpainting(batch)

        # Jobs whose prompts need different numbers of 77-token chunks run in separate pipeline
        # calls: padding a short prompt with empty chunks would change its picture.
        groups = self._by_chunk_count(pipe, jobs, batch.run_steps, words)
        started = time.perf_counter()
        self._model_passes = 0
        images_of: dict[str, list[Image.Image]] = {}
        for part, group in enumerate(groups):
            if all(self.is_cancelled(job.job_id) for job in group):
                continue
            prompts = [job.prompt for job in group for _ in job.seeds]
            negatives = [job.negative for job in group for _ in job.seeds]
            seeds = [seed for job in group for seed in job.seeds]
            first_index, offset = {}, 0
            for job in group:
                first_index[job.job_id] = offset
                offset += len(job.seeds)
            callback = self._callback(
                batch, jobs, group, first_index, started, loaded.request.family, (part, len(groups))
            )
            images = self._generate_with_oom_retry(pipe, batch, prompts, negatives, seeds, callback)
            for job in group:
                images_of[job.job_id] = images[first_index[job.job_id] : first_index[job.job_id] + len(job.seeds)]
        inference_seconds = time.perf_counter() - started
        self._send_results(batch, jobs, images_of, pipe, words, load_seconds, inference_seconds, source)

    def _run_flow(self, batch: RunBatch, jobs: list, loaded, source: str, load_seconds: float) -> None:
        """A flow-matching model (Flux, SD3): prompts through its own encoders (gpu_worker/flow_prompts.py),
        one pipeline call for the batch; from a picture (img2img) and with the hires fix through the
        same modules as an image-to-image pipeline."""
        if batch.mask is not None or batch.embeddings:
            raise CheckpointLoadError(f"{batch.load.name}: inpainting and embeddings are not supported on it yet")
        pipe = loaded.pipeline
        pipe.scheduler = make_scheduler(loaded.base_scheduler_config, batch.sampler, batch.schedule)
        self._conditioning, self._words, self._nine, self._mask = None, None, False, None
        self._img2img = image_to_image(loaded) if batch.init_image is not None or batch.hires_scale else None
        self._init = None
        if batch.init_image is not None:
            self._init = prepare_init(batch.init_image, batch.width, batch.height, batch.resize_mode)
        first_index, offset = {}, 0
        for job in jobs:
            first_index[job.job_id] = offset
            offset += len(job.seeds)
        started = time.perf_counter()
        self._model_passes, self._pass = 0, (0, batch.run_steps)
        callback = self._callback(batch, jobs, jobs, first_index, started, batch.load.family, (0, 1))
        prompts = [job.prompt for job in jobs for _ in job.seeds]
        negatives = [job.negative for job in jobs for _ in job.seeds]
        seeds = [seed for job in jobs for seed in job.seeds]
        images = self._generate_with_oom_retry(pipe, batch, prompts, negatives, seeds, callback)
        images_of = {job.job_id: images[first_index[job.job_id] : first_index[job.job_id] + len(job.seeds)] for job in jobs}
        self._send_results(batch, jobs, images_of, pipe, None, load_seconds, time.perf_counter() - started, source)

    def _send_results(self, batch: RunBatch, jobs: list, images_of: dict, pipe, words, load_seconds: float, inference_seconds: float, source: str) -> None:
        self._previews_sent()
        seeds = [seed for job in jobs for seed in job.seeds]
        for job in jobs:
            if self.is_cancelled(job.job_id) or job.job_id not in images_of:
                self.send(JobCancelled(batch.batch_id, job.job_id))
            else:
                used = words_used(pipe, job.prompt, job.negative, batch.run_steps, words) if words else []
                ti_hashes = ", ".join(f"{a1111_alias(name)}: {words.short_hashes[name]}" for name in used)
                results = tuple(
                    _result(
                        image,
                        seed,
                        infotext_for(batch, job.prompt, job.negative, seed, ti_hashes),
                        self.safety.score(image),  # every picture is checked before it leaves the worker
                    )
                    for image, seed in zip(images_of[job.job_id], job.seeds, strict=True)
                )
                self.send(
                    JobDone(
                        batch.batch_id,
                        job.job_id,
                        results,
                        self.device,
                        load_seconds,
                        inference_seconds,
                        source,
                        len(seeds),
                    )
                )

    @staticmethod
    def _by_chunk_count(pipe: DiffusionPipeline, jobs: list, steps: int, words: WordEmbeddings | None) -> list[list]:
        """Jobs grouped by how many chunks their prompt and negative need, in the batch's order."""
        groups: dict[int, list] = {}
        for job in jobs:
            groups.setdefault(chunks_needed(pipe, job.prompt, job.negative, steps, words), []).append(job)
        return list(groups.values())

    def _callback(
        self,
        batch: RunBatch,
        everyone: list,
        jobs: list,
        first_index: dict[str, int],
        started: float,
        family: str,
        part: tuple[int, int],
    ):
        """Progress across the batch's pipeline calls (`part` = this call, of how many), previews, cancel."""
        number, parts = part

        def on_step_end(pipe: DiffusionPipeline, index: int, timestep: object, kwargs: dict) -> dict:
            if all(self.is_cancelled(job.job_id) for job in everyone):
                raise BatchCancelled
            # Second-order samplers run more model passes than steps; report in the user's steps.
            before, steps = self._pass  # steps of this call's earlier pass (hires fix), steps of this one
            step = min(steps, math.ceil((index + 1) * steps / max(pipe.num_timesteps, 1)))
            done, total = number * batch.total_steps + before + step, parts * batch.total_steps
            elapsed = time.perf_counter() - started
            self._model_passes += 1
            self.steps_per_second = self._model_passes / elapsed if elapsed > 0 else 0.0
            self.send(BatchProgress(batch.batch_id, done, total, elapsed, self.steps_per_second))
            conditioning = self._conditioning
            if conditioning is not None and conditioning.changes and step < steps:
                upcoming = conditioning.key(step + 1)  # the callback runs after a pass: it sets the next step
                if upcoming != self._applied:
                    kwargs |= conditioning.replace(step + 1, pipe.do_classifier_free_guidance)
                    self._applied = upcoming
            previous = self._checked
            checking = previous is not None and not previous.done()
            if batch.preview_every and step < steps and (index + 1) % batch.preview_every == 0 and not checking:
                latents = kwargs["latents"]
                images = []
                for job in jobs:
                    index_in_batch = first_index[job.job_id]
                    one = latents[index_in_batch : index_in_batch + 1]
                    if decodes_previews(family, batch.load.pipeline_config):
                        width, height = self._size  # this pass's (the hires fix's second is larger)
                        [image] = vae_previews(pipe, one, height, width)
                    else:
                        [image] = latents_to_images(one, family)
                    images.append((job.job_id, image))
                self._checked = self._checking.submit(self._send_previews, batch.batch_id, done, images)
            return kwargs

        return on_step_end

    def _send_previews(self, batch_id: str, step: int, images: list[tuple[str, Image.Image]]) -> None:
        """Each preview checked like every picture that leaves the worker; the bot decides where it
        may be shown (bot/generation/policy.py)."""
        try:
            for job_id, image in images:
                score = self.safety.score(image).score
                self.send(JobPreview(batch_id, job_id, step, png_bytes(image), score))
        except Exception:  # a preview is a courtesy: the job goes on without it
            log.exception("batch %s: a preview could not be checked", batch_id)

    def _previews_sent(self) -> None:
        """Wait for the previews being checked, so none arrives after its job's result."""
        if self._checked is not None:
            self._checked.result()
            self._checked = None

    def _prepare_inpainting(self, batch: RunBatch) -> None:
        """Inpaint area and masked content (gpu_worker/inpaint_options.py) applied to the batch's
        picture and mask; what the overlay needs afterwards is kept."""
        assert self._init is not None and self._mask is not None
        size = (batch.width, batch.height)
        box = crop_region(self._mask, batch.mask_padding, *size) if batch.only_masked else None
        if box is not None:  # Only masked: that region, enlarged to the job's size
            self._paste = (self._init, self._mask, box)
            self._init = self._init.crop(box).resize(size, Image.Resampling.LANCZOS)
            self._mask = self._mask.crop(box).resize(size, Image.Resampling.LANCZOS)
        self._original = self._init  # the overlay keeps the picture as it was, not as filled
        if batch.masked_content == "fill":
            self._init = fill_masked(self._init, self._mask)

    def _overlay(self, images: list[Image.Image]) -> list[Image.Image]:
        """A1111's overlay: outside the (blurred) mask, the picture as it was; with Only masked, the
        region shrunk back and pasted into the whole picture first."""
        out = []
        for image in images:
            picture, mask = self._original, self._mask
            if self._paste is not None:
                picture, mask, box = self._paste
                whole = picture.copy()
                whole.paste(image.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS), box[:2])
                image = whole
            out.append(Image.composite(image, picture, mask))
        return out

    def _inpainting_model_inputs(self, batch: RunBatch, n: int) -> dict:
        """Pass one's inputs for an inpainting checkpoint, as A1111 feeds one (processing.py
        `txt2img_image_conditioning` / `img2img_image_conditioning`): from text, a grey picture under a
        full mask, redrawn from pure noise; from a picture, that picture under a full mask (or the
        person's mask) at the job's denoising strength."""
        size = (batch.width, batch.height)
        picture = self._init if self._init is not None else Image.new("RGB", size, (128, 128, 128))
        mask = self._mask if self._mask is not None else Image.new("L", size, 255)
        strength = batch.strength if self._init is not None else 1.0
        return {"image": [picture] * n, "mask_image": [mask] * n, "strength": strength, "width": size[0], "height": size[1]}

    @staticmethod
    def _full_mask(pipe, enlarged, size: tuple[int, int], n: int) -> dict:
        """Pass two on an inpainting checkpoint: redraw everywhere. From a latent, the masked picture
        (all grey) is encoded here: the pipeline would take an all-zero latent for it instead."""
        width, height = size
        inputs: dict = {"mask_image": [Image.new("L", size, 255)] * n, "width": width, "height": height}
        if isinstance(enlarged, torch.Tensor):
            grey = encode(pipe.vae, torch.zeros(1, 3, height, width, device=pipe.vae.device, dtype=pipe.vae.dtype))
            inputs["masked_image_latents"] = grey.repeat(n, 1, 1, 1)
        return inputs

    def _generate_with_oom_retry(self, pipe, batch: RunBatch, prompts, negatives, seeds, callback) -> list[Image.Image]:
        def call(p: list[str], n: list[str], s: list[int]) -> list[Image.Image]:
            if batch.load.family in FLOW_FAMILIES:
                return flow_sample(p, n, s)
            # Prompts read as A1111 reads them: emphasis, BREAK, chunks past 77 tokens, clip skip, and
            # prompt editing / alternation, whose embeddings the step callback swaps in as they change.
            if self._nine:
                shape = self._inpainting_model_inputs(batch, len(s))
            elif self._init is None:
                shape = {"width": batch.width, "height": batch.height}
            else:  # img2img: the picture sets the size; strength says how much of it is redrawn
                shape = {"image": [self._init] * len(s), "strength": batch.strength}
            if self._mask is not None and not self._nine:  # inpainting: only where the mask is white
                shape |= {"mask_image": [self._mask] * len(s), "width": batch.width, "height": batch.height}
            if self._mask is not None and batch.masked_content in ("latent noise", "latent nothing"):
                shape["image"] = masked_start(pipe, self._init, self._mask, batch.masked_content, s)
                # The masked picture's latent, which the pipeline cannot make from a latent start (an
                # inpainting checkpoint reads it; a normal one needs it given so as not to try).
                shape["masked_image_latents"] = masked_picture_latents(pipe, self._init, self._mask, len(s))
            self._pass = (0, batch.run_steps)
            first = sample(pipe, p, n, s, batch.steps, batch.run_steps, shape, "latent" if batch.hires_scale else "pil")
            if self._mask is not None:  # A1111's overlay: outside the (blurred) mask, the picture as it was
                return self._overlay(first)
            if not batch.hires_scale:
                return first
            # Hires fix (A1111): pass one's result enlarged, then redrawn at `hires_denoise` by img2img.
            self._pass = (batch.run_steps, batch.hires_run_steps)
            model = batch.hires_model
            upscaler = self.upscalers.get(model.path, model.sha256) if model else batch.hires_upscaler
            enlarged = upscale(pipe, first, batch.hires_size, upscaler)
            shape = {"image": enlarged, "strength": batch.hires_denoise}
            if self._nine:  # redrawn everywhere: a full mask over a grey masked picture, as A1111's
                shape |= self._full_mask(pipe, enlarged, batch.hires_size, len(s))
            steps = batch.hires_steps or batch.steps
            return sample(self._img2img, p, n, s, steps, batch.hires_run_steps, shape, "pil")

        def sample(pipe, p: list[str], n: list[str], s: list[int], steps: int, run: int, shape: dict, output: str):
            self._conditioning = Conditioning(pipe, p, n, run, batch.clip_skip, self._words)
            self._applied = self._conditioning.key(1)
            return pipe(
                **self._conditioning.inputs(1),
                **shape,
                num_inference_steps=steps,
                guidance_scale=batch.cfg,
                **({"guidance_rescale": batch.cfg_rescale} if batch.cfg_rescale else {}),
                # Noise from CPU generators: the same seed gives the same image on any GPU model.
                generator=[torch.Generator("cpu").manual_seed(seed) for seed in s],
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=["latents", *self._conditioning.tensor_inputs()],
                output_type=output,
            ).images

        def flow_sample(p: list[str], n: list[str], s: list[int]) -> list[Image.Image]:
            # Prompts read as A1111 reads them (tags out, emphasis on the encoders' tokens): flow_prompts.py.
            if batch.load.family == "sd3":  # classifier-free guidance with the negative prompt, as SAI runs it
                guidance = {"guidance_scale": batch.cfg, **sd3_inputs(pipe, p, n, 256)}
            else:
                # Flux dev takes its guidance as an input (Forge's "Distilled CFG Scale"); a CFG scale above 1
                # also runs true classifier-free guidance with the negative prompt, as Forge does (twice the work).
                length = 512 if pipe.transformer.config.guidance_embeds else 256  # BFL's T5 lengths: dev, schnell
                true_cfg = batch.cfg > 1
                guidance = {
                    "guidance_scale": batch.distilled_cfg,
                    **({"true_cfg_scale": batch.cfg} if true_cfg else {}),
                    **flux_inputs(pipe, p, n, length, true_cfg),
                }
            def run(model, steps: int, size: tuple[int, int], **shape) -> list[Image.Image]:
                self._size = size
                return model(
                    width=size[0],
                    height=size[1],
                    num_inference_steps=steps,
                    # Noise from CPU generators: the same seed gives the same picture on any GPU model.
                    generator=[torch.Generator("cpu").manual_seed(seed) for seed in s],
                    callback_on_step_end=callback,
                    callback_on_step_end_tensor_inputs=["latents"],
                    output_type="pil",
                    **guidance,
                    **shape,
                ).images

            size = (batch.width, batch.height)
            self._pass = (0, batch.run_steps)
            if self._init is not None:  # img2img: strength says how much of the picture is redrawn
                first = run(self._img2img, batch.steps, size, image=[self._init] * len(s), strength=batch.strength)
            else:
                first = run(pipe, batch.steps, size)
            if not batch.hires_scale:
                return first
            # Hires fix (A1111): pass one's picture enlarged by a picture upscaler, redrawn by img2img.
            self._pass = (batch.run_steps, batch.hires_run_steps)
            model = batch.hires_model
            upscaler = self.upscalers.get(model.path, model.sha256) if model else batch.hires_upscaler
            enlarged = enlarge(first, batch.hires_size, upscaler)
            steps = batch.hires_steps or batch.steps
            return run(self._img2img, steps, batch.hires_size, image=enlarged, strength=batch.hires_denoise)

        try:
            return call(prompts, negatives, seeds)
        except torch.OutOfMemoryError:
            log.warning("batch %s: out of memory; retrying one image at a time with memory savers", batch.batch_id)
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        flow = batch.load.family in FLOW_FAMILIES  # a transformer: no attention slicing to switch on
        if not flow:
            pipe.enable_attention_slicing()
        pipe.vae.enable_tiling()
        try:
            return [
                image
                for i in range(len(seeds))
                for image in call(prompts[i : i + 1], negatives[i : i + 1], seeds[i : i + 1])
            ]
        except torch.OutOfMemoryError:
            raise OutOfMemory(
                f"out of GPU memory at {batch.width}x{batch.height} even one image at a time with memory savers; "
                "try a smaller size"
            ) from None
        finally:
            if not flow:
                pipe.disable_attention_slicing()
            pipe.vae.disable_tiling()
