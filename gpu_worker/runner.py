"""Run one batch: load (through the cache), denoise with progress and previews, render PNGs.

The batch's family (gpu_worker/families/) prepares it and draws its pictures; this module does what
every family shares, in order: refuse or load, prepare, one pipeline call per draw (retried one
picture at a time with memory savers after running out of memory), results checked and sent.
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
from functools import partial
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from common.infotext import with_template
from common.protocol import (
    BatchFailed,
    BatchFinished,
    BatchLoading,
    BatchProgress,
    DetectorUse,
    ImageResult,
    JobCancelled,
    JobDone,
    JobPart,
    JobPreview,
    RunBatch,
)
from common.upscaler_detection import UpscalerFileError
from gpu_worker.cache import PipelineCache
from gpu_worker.controlnets import ControlNetCache, ControlNetError
from gpu_worker.detail_pass import Finder, detail_pictures
from gpu_worker.device_memory import in_use, memory
from gpu_worker.families import FAMILIES
from gpu_worker.families.base import BatchRun, Draw
from gpu_worker.loaded import CheckpointLoadError, held, restore
from gpu_worker.loras import LoraError, TaintedPipeline, apply_loras
from gpu_worker.previews import png_bytes
from gpu_worker.prompt_encoding import words_used
from gpu_worker.render import png_with_infotext
from gpu_worker.result_infotext import a1111_alias, infotext_for
from gpu_worker.safety import NudityScorer
from gpu_worker.textual_inversion import EmbeddingCache, EmbeddingError
from gpu_worker.upscale_models import UpscalerCache
from gpu_worker.vaes import VaeCache, VaeError
from gpu_worker.yolo import DetectorCache, DetectorError, Found, detect

log = logging.getLogger(__name__)

Send = Callable[[object], None]


class BatchCancelled(Exception):
    pass


class OutOfMemory(Exception):
    pass


class BatchRunner:
    def __init__(self, device: str, cache: PipelineCache, send: Send, is_cancelled: Callable[[str], bool]) -> None:
        self.device = device
        self.cache = cache
        self.send = send
        self.is_cancelled = is_cancelled
        self.steps_per_second = 0.0
        self._model_passes = 0  # in this batch, for steps_per_second
        self.embeddings = EmbeddingCache()
        self.upscalers = UpscalerCache(torch.device(device))
        self.vaes = VaeCache()
        self.controlnets = ControlNetCache()
        self.safety = NudityScorer()
        self.detectors = DetectorCache()
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
        except (CheckpointLoadError, LoraError, EmbeddingError, OutOfMemory, UpscalerFileError, VaeError, ControlNetError, DetectorError) as e:
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
            self.controlnets.release()
            self._previews_sent()
            loaded = tuple(self.cache.loaded_keys())
            held_as = tuple(self.cache.placements())
            self.send(BatchFinished(batch.batch_id, loaded, self.steps_per_second, *memory(self.device), held_as))

    def _run(self, batch: RunBatch, jobs: list[JobPart]) -> None:
        family = FAMILIES.get(batch.load.family)
        if family is None:
            raise CheckpointLoadError(
                f"{batch.load.name}: {batch.load.architecture} checkpoints cannot be run by Easel"
            )
        refusal = family.refuses(batch)
        if batch.edit_pngs and not family.edits:
            refusal = f"{batch.load.name}: {batch.load.architecture} checkpoints cannot edit pictures"
        if batch.controlnets and not family.controls:
            refusal = f"{batch.load.name}: ControlNet runs on SD1, SD2, SDXL and Flux.1 checkpoints, not {batch.load.architecture}"
        if refusal:
            raise CheckpointLoadError(refusal)
        if batch.load.format != "diffusers" and not Path(batch.load.path).is_file():
            raise CheckpointLoadError(f"{batch.load.name}: the file is no longer on disk")
        self.send(BatchLoading(batch.batch_id, batch.load.name, self.cache.where(batch.load.cache_key)))
        started = time.perf_counter()
        loaded, source = self.cache.get(batch.load)
        log.info("batch %s: %s from %s, %s on %s", batch.batch_id, batch.load.name, source, loaded.placement, self.device)
        try:
            if apply_loras(loaded, batch.loras):
                self.cache.remeasure(batch.load.cache_key)
        except TaintedPipeline:
            self.cache.discard(batch.load.cache_key)
            raise
        self.vaes.apply(loaded, batch.vae)
        load_seconds = time.perf_counter() - started
        run = BatchRun(batch, loaded, self.upscalers, loaded.pipeline)
        if batch.controlnets:
            run.control = self.controlnets.prepare(
                batch.controlnets,
                batch.control_pngs,
                batch.parameters.control,
                loaded,
                (batch.width, batch.height),
                batch.parameters.seed,
            )
        passes = self._detail_passes(batch)  # its detectors read before drawing: a bad file fails the job first
        family.prepare(run, self.embeddings)
        draws = family.draws(run, jobs)
        started = time.perf_counter()
        self._model_passes = 0
        images_of: dict[str, list[Image.Image]] = {}
        for number, draw in enumerate(draws):
            if all(self.is_cancelled(job.job_id) for job in draw.jobs):
                continue
            callback = StepCallback(self, run, draw, jobs, started, (number, len(draws)))
            images_of |= draw.split(self._draw(run, draw, callback))
        notes = self._detail(run, jobs, images_of, passes) if passes else {}
        inference_seconds = time.perf_counter() - started
        self._send_results(run, jobs, images_of, load_seconds, inference_seconds, source, notes)

    def _detail_passes(self, batch: RunBatch) -> list[tuple[DetectorUse, Finder]]:
        """Each pass of the batch's detail pass with what finds its faces or hands: its detector file,
        else (faces) the picture check's detector."""
        uses = batch.detectors or ((DetectorUse("faces"),) if batch.parameters.detail == "faces" else ())
        passes: list[tuple[DetectorUse, Finder]] = []
        for use in uses:
            if use.detector is None:
                passes.append((use, lambda picture, confidence: [Found(box, 1.0) for box in self.safety.faces(picture, confidence)]))
            else:
                network = self.detectors.get(use.detector.path, use.detector.sha256, use.detector.name)
                passes.append((use, partial(self._detect, network)))
        return passes

    def _detect(self, network: torch.nn.Module, picture: Image.Image, confidence: float) -> list[Found]:
        """A detector runs on the worker's device, in float32, and goes back to CPU RAM after."""
        network.to(device=self.device, dtype=torch.float32)
        try:
            return detect(network, picture, confidence, self.device)
        finally:
            network.to("cpu")

    def _detail(
        self,
        run: BatchRun,
        jobs: list[JobPart],
        images_of: dict[str, list[Image.Image]],
        passes: list[tuple[DetectorUse, Finder]],
    ) -> dict[str, str]:
        """The detail pass on each job's pictures (gpu_worker/detail_pass.py), in place; each job's note."""
        notes = {}

        def draw_pass(pass_run: BatchRun, draw: Draw) -> list[Image.Image]:  # as every draw: retried on out of memory
            return self._draw(pass_run, draw, StepCallback(self, pass_run, draw, jobs, time.perf_counter(), (0, 1)))

        for job in jobs:
            if job.job_id in images_of and not self.is_cancelled(job.job_id):
                images_of[job.job_id], notes[job.job_id] = detail_pictures(
                    passes, self.embeddings, draw_pass, run, job, images_of[job.job_id]
                )
        return notes

    def _draw(self, run: BatchRun, draw: Draw, callback: StepCallback) -> list[Image.Image]:
        """The family draws the call's pictures; out of memory, once more a picture at a time with
        its memory savers on."""
        family = FAMILIES[run.batch.load.family]
        before = held(run.loaded)
        try:
            return family.draw(run, draw, callback)
        except torch.OutOfMemoryError:
            restored = restore(run.loaded, before)  # as the failed call left them, they would break every later job
            freed = self.cache.keep_only(run.loaded.request.cache_key)  # the other models make room
            log.warning(
                "batch %s: out of memory; %s restored, %d other model(s) moved off the device, retrying one image "
                "at a time with memory savers",
                run.batch.batch_id,
                ", ".join(restored) or "nothing to be",
                freed,
            )
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        try:
            with family.memory_savers(run.pipe):
                return [image for one in draw.one_by_one() for image in family.draw(run, one, callback)]
        except torch.OutOfMemoryError:
            restore(run.loaded, before)
            raise OutOfMemory(
                f"out of GPU memory at {run.batch.width}x{run.batch.height} even one image at a time with memory "
                f"savers ({in_use(self.device)}); try a smaller size"
            ) from None

    def _send_results(
        self,
        run: BatchRun,
        jobs: list[JobPart],
        images_of: dict[str, list[Image.Image]],
        load_seconds: float,
        inference_seconds: float,
        source: str,
        notes: dict[str, str] | None = None,
    ) -> None:
        self._previews_sent()
        batch = run.batch
        pictures = sum(len(job.seeds) for job in jobs)
        maps = tuple(self._result(picture, 0, "") for picture in run.control.maps) if run.control else ()
        for job in jobs:
            if self.is_cancelled(job.job_id) or job.job_id not in images_of:
                self.send(JobCancelled(batch.batch_id, job.job_id))
                continue
            results = tuple(
                self._result(image, seed, self._infotext(run, job, index, seed))
                for index, (image, seed) in enumerate(zip(images_of[job.job_id], job.seeds, strict=True))
            )
            said = (notes or {}).get(job.job_id, "")
            done = JobDone(
                batch.batch_id, job.job_id, results, self.device, load_seconds, inference_seconds, source, pictures, maps,
                (said,) if said else (),
            )  # fmt: skip
            self.send(done)

    def _infotext(self, run: BatchRun, job: JobPart, index: int, seed: int) -> str:
        """Picture `index`'s parameters: its own prompt, and with wildcards the template after them."""
        batch, words = run.batch, run.words
        prompt, negative = job.prompt_of(index)
        used = words_used(run.pipe, prompt, negative, batch.prompt_steps[0], words) if words else []
        ti_hashes = ", ".join(f"{a1111_alias(name)}: {words.short_hashes[name]}" for name in used) if words else ""
        text = infotext_for(batch, prompt, negative, seed, ti_hashes, run.loaded.first_block_cache)
        return with_template(text, job.prompt, job.negative) if job.templated else text

    def _result(self, image: Image.Image, seed: int, infotext: str) -> ImageResult:
        scores = self.safety.score(image)  # every picture is checked before it leaves the worker
        return ImageResult(png_with_infotext(image, infotext), seed, infotext, scores.score, scores.labels)

    def _send_previews(self, batch_id: str, step: int, images: list[tuple[str, Image.Image]]) -> None:
        """Each preview checked like every picture that leaves the worker; the bot decides where it
        may be shown (bot/rules/policy.py)."""
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


class StepCallback:
    """diffusers' `callback_on_step_end` for one pipeline call: progress across the batch's calls
    (`part` = this call, of how many), prompt editing's next embeddings, previews, cancel."""

    def __init__(
        self,
        runner: BatchRunner,
        run: BatchRun,
        draw: Draw,
        everyone: list[JobPart],
        started: float,
        part: tuple[int, int],
    ) -> None:
        self.runner, self.run, self.draw, self.everyone = runner, run, draw, everyone
        self.started, self.part = started, part
        self.first_index = draw.first_index()

    def __call__(self, pipe: DiffusionPipeline, index: int, timestep: object, kwargs: dict) -> dict:
        runner, run, batch = self.runner, self.run, self.run.batch
        if all(runner.is_cancelled(job.job_id) for job in self.everyone):
            raise BatchCancelled
        # Second-order samplers run more model passes than steps; report in the user's steps.
        before, steps = run.pass_steps  # steps of this call's earlier pass (hires fix), steps of this one
        step = min(steps, math.ceil((index + 1) * steps / max(pipe.num_timesteps, 1)))
        number, parts = self.part
        done, total = number * batch.total_steps + before + step, parts * batch.total_steps
        elapsed = time.perf_counter() - self.started
        runner._model_passes += 1
        runner.steps_per_second = runner._model_passes / elapsed if elapsed > 0 else 0.0
        runner.send(BatchProgress(batch.batch_id, done, total, elapsed, runner.steps_per_second))
        if run.control is not None:  # which ControlNet units act at the next model call
            run.control.step, run.control.total = index + 1, max(pipe.num_timesteps, 1)
        conditioning = run.conditioning
        if conditioning is not None and conditioning.changes and index + 1 < pipe.num_timesteps:
            # The callback runs after model call `index`: it sets what the next call sees.
            upcoming = conditioning.key(index + 1)
            if upcoming != run.applied:
                kwargs |= conditioning.replace(index + 1, pipe.do_classifier_free_guidance)
                run.applied = upcoming
                if run.regional is not None:
                    run.regional.set(*conditioning.regions(index + 1))
        if (
            batch.preview_every
            and step < steps
            and (index + 1) % batch.preview_every == 0
            and time.perf_counter() - run.last_preview >= batch.preview_seconds
        ):
            self._preview(pipe, kwargs["latents"], done)
        return kwargs

    def _preview(self, pipe: DiffusionPipeline, latents: torch.Tensor, step: int) -> None:
        runner = self.runner
        if runner._checked is not None and not runner._checked.done():
            return  # the last step's previews are still being checked: this step shows none
        family = FAMILIES[self.run.batch.load.family]
        places = self.first_index
        images = [
            (job.job_id, family.preview(self.run, pipe, latents[places[job.job_id] : places[job.job_id] + 1]))
            for job in self.draw.jobs
        ]
        runner._checked = runner._checking.submit(runner._send_previews, self.run.batch.batch_id, step, images)
        self.run.last_preview = time.perf_counter()
