"""The worker's batch runner, in-process on a tiny checkpoint: what each batch sends back."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from bot.preloaded import PreloadedProcess
from common.protocol import (
    BatchFailed,
    BatchFinished,
    BatchLoading,
    BatchProgress,
    JobCancelled,
    JobDone,
    JobPart,
    JobPreview,
    LoadRequest,
    RunBatch,
)
from common.samplers import SAMPLERS, ZERO_SNR_SAMPLERS
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline
from gpu_worker.runner import BatchRunner
from gpu_worker.samplers import SCHEDULERS
from gpu_worker.sampling.scheduler import A1111Scheduler
from gpu_worker.sampling.solvers import SOLVERS
from tests.a1111_infotext import parse_generation_parameters as parse_infotext


@pytest.fixture(scope="module")
def load_request(tiny_dir: Path) -> LoadRequest:
    path = tiny_dir / "tiny-sd1.safetensors"
    ins = inspect_file(path)
    return LoadRequest(str(path), "tiny-sd1", "sd1", "SD1.x", "safetensors", ins.pipeline_config, "epsilon", "ab" * 32)


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache("cpu", 1 << 30, 0, lambda request: load_pipeline(request, "cpu"))


class Recorder:
    def __init__(self, cache: PipelineCache, cancelled: set[str] | None = None) -> None:
        self.events: list[object] = []
        self.cancelled = cancelled if cancelled is not None else set()
        self.runner = BatchRunner("cpu", cache, self.events.append, lambda job_id: job_id in self.cancelled)

    def run(self, batch: RunBatch) -> list[object]:
        self.events.clear()
        self.runner.run(batch)
        assert isinstance(self.events[-1], BatchFinished)
        return list(self.events)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def batch(load: LoadRequest, *jobs: JobPart, **overrides) -> RunBatch:
    values = dict(
        batch_id="b1",
        load=load,
        jobs=jobs,
        width=64,
        height=64,
        steps=3,
        cfg=7.0,
        sampler="Euler",
        schedule="Automatic",
        model_name="tiny-sd1",
    )
    return RunBatch.of(**(values | overrides))


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_same_request_and_seed_give_the_same_image(cache: PipelineCache, load_request: LoadRequest) -> None:
    rec = Recorder(cache)
    first = rec.run(batch(load_request, JobPart("j1", "a cat", "", (42,))))
    second = rec.run(batch(load_request, JobPart("j1", "a cat", "", (42,))))
    [done1], [done2] = [e for e in first if isinstance(e, JobDone)], [e for e in second if isinstance(e, JobDone)]
    assert done1.images[0].png == done2.images[0].png
    other = rec.run(batch(load_request, JobPart("j1", "a cat", "", (43,))))
    assert next(e for e in other if isinstance(e, JobDone)).images[0].png != done1.images[0].png


def test_batch_keeps_each_jobs_prompt_and_seed(cache: PipelineCache, load_request: LoadRequest) -> None:
    rec = Recorder(cache)
    rec.run(
        batch(load_request, JobPart("a", "a red cube", "blurry", (7, 8)), JobPart("b", "a blue sphere", "", (100,)))
    )
    done = {e.job_id: e for e in rec.of(JobDone)}
    assert set(done) == {"a", "b"} and done["a"].batch_size == 3
    assert [i.seed for i in done["a"].images] == [7, 8] and [i.seed for i in done["b"].images] == [100]
    prompt, negative, params = parse_infotext(done["a"].images[1].infotext)
    assert (prompt, negative, params["Seed"], params["Model hash"]) == ("a red cube", "blurry", "8", "abababab" + "ab")
    assert parse_infotext(done["b"].images[0].infotext)[0] == "a blue sphere"
    # Each image in the batch is the image that job would get alone (up to float rounding).
    rec.run(batch(load_request, JobPart("solo", "a blue sphere", "", (100,))))
    solo = rec.of(JobDone)[0].images[0].png
    assert np.abs(pixels(solo) - pixels(done["b"].images[0].png)).max() <= 3


@pytest.mark.parametrize(
    "sampler,schedule",
    [(name, spec.default_schedule) for name, spec in SAMPLERS.items()]
    + [("Euler", "Karras"), ("DPM++ 2M", "Exponential"), ("UniPC", "Karras"), ("Euler a", "SGM Uniform")]
    + [("DPM++ 2M", "Align Your Steps"), ("DPM++ SDE", "Beta"), ("Heun", "KL Optimal"), ("LMS", "Polyexponential")]
    + [("DPM2", "Simple"), ("Euler", "Normal"), ("DPM++ 2S a", "DDIM"), ("DPM++ 3M SDE", "Uniform")],
)
def test_every_mapped_sampler_runs(
    cache: PipelineCache, load_request: LoadRequest, sampler: str, schedule: str
) -> None:
    rec = Recorder(cache)
    rec.run(batch(load_request, JobPart("j", "a cat", "", (1,)), sampler=sampler, schedule=schedule, steps=3))
    [done] = rec.of(JobDone)
    image = Image.open(io.BytesIO(done.images[0].png))
    assert image.size == (64, 64)
    params = parse_infotext(image.info["parameters"])[2]
    assert params["Sampler"] == sampler and params.get("Schedule type", "Automatic") == schedule
    progress = rec.of(BatchProgress)
    assert progress[-1].step == 3 and progress[-1].total == 3  # in the user's steps, even for 2nd-order samplers
    scheduler = cache.get(load_request)[0].pipeline.scheduler
    if SAMPLERS[sampler].kdiffusion:  # A1111's own form (gpu_worker/sampling/)
        assert isinstance(scheduler, A1111Scheduler) and scheduler.config.sampler == sampler
        return
    assert type(scheduler).__name__ == SCHEDULERS[sampler].scheduler
    assert scheduler.config.get("use_karras_sigmas", False) == (schedule == "Karras")
    assert scheduler.config.get("algorithm_type", "dpmsolver++") == dict(SCHEDULERS[sampler].options).get(
        "algorithm_type", "dpmsolver++"
    )


def test_progress_previews_and_loading(cache: PipelineCache, load_request: LoadRequest, tiny_dir: Path) -> None:
    rec = Recorder(cache)
    rec.run(batch(load_request, JobPart("j", "a cat", "", (1,)), steps=4, preview_every=1))
    assert [p.step for p in rec.of(BatchProgress)] == [1, 2, 3, 4]
    previews = rec.of(JobPreview)
    # The first step's preview always; later ones unless the last is still being checked (the check
    # runs beside the steps); none after the last step: the real image follows.
    steps = [p.step for p in previews]
    assert steps[0] == 1 and steps == sorted(set(steps)) and set(steps) <= {1, 2, 3}
    assert all(p.nsfw_score is not None and 0 <= p.nsfw_score <= 1 for p in previews)  # each one checked
    assert Image.open(io.BytesIO(previews[0].png)).size == (8, 8)  # latent resolution, no VAE pass
    assert rec.events.index(previews[-1]) < rec.events.index(rec.of(JobDone)[0])  # before the result
    assert rec.of(BatchLoading)[0].cache == "device"


def test_previews_wait_out_the_seconds_asked_between_them(cache: PipelineCache, load_request: LoadRequest) -> None:
    """`preview_seconds` (the bot's EASEL_PREVIEW_SECONDS): a preview no sooner than that after the
    batch's last, however many steps have passed; the first one still comes at the first step."""
    rec = Recorder(cache)
    rec.run(batch(load_request, JobPart("j", "a cat", "", (1,)), steps=12, preview_every=1, preview_seconds=3600.0))
    assert [p.step for p in rec.of(JobPreview)] == [1]
    assert [p.step for p in rec.of(BatchProgress)] == list(range(1, 13))


def test_cancel_running_job_between_steps(cache: PipelineCache, load_request: LoadRequest) -> None:
    rec = Recorder(cache)
    original = rec.runner.send

    def send(event: object) -> None:
        original(event)
        if isinstance(event, BatchProgress) and event.step == 2:
            rec.cancelled.add("j")

    rec.runner.send = send
    rec.run(batch(load_request, JobPart("j", "a cat", "", (1,)), steps=20))
    assert rec.of(JobCancelled) and not rec.of(JobDone)
    assert max(p.step for p in rec.of(BatchProgress)) == 2


def test_cancel_one_job_of_a_batch(cache: PipelineCache, load_request: LoadRequest) -> None:
    rec = Recorder(cache, cancelled={"gone"})
    rec.run(batch(load_request, JobPart("kept", "a", "", (1,)), JobPart("gone", "b", "", (2,))))
    assert [e.job_id for e in rec.of(JobCancelled)] == ["gone"]
    assert [e.job_id for e in rec.of(JobDone)] == ["kept"]


def test_vanished_checkpoint_fails_before_any_work(
    cache: PipelineCache, load_request: LoadRequest, tmp_path: Path
) -> None:
    moved = tmp_path / "gone.safetensors"
    shutil.copy(load_request.path, moved)
    request = LoadRequest(str(moved), "gone", "sd1", "SD1.x", "safetensors", "tiny-sd1", "epsilon", "cd" * 32)
    moved.unlink()
    rec = Recorder(cache)
    rec.run(batch(request, JobPart("j", "a", "", (1,))))
    [failed] = rec.of(BatchFailed)
    assert "gone: the file is no longer on disk" in failed.message and failed.job_ids == ("j",)
    assert not rec.of(BatchProgress)


def test_out_of_memory_retries_one_image_at_a_time_then_gives_up(
    cache: PipelineCache, load_request: LoadRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import StableDiffusionPipeline

    real_call = StableDiffusionPipeline.__call__
    calls: list[int] = []
    fail_first = {"n": 1}

    def flaky(self, *args, **kwargs):
        calls.append(len(kwargs["prompt_embeds"]))
        if len(calls) <= fail_first["n"]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        sliced = {type(p).__name__ for p in self.unet.attn_processors.values()} == {"SlicedAttnProcessor"}
        assert sliced and self.vae.use_tiling  # memory savers are on for the retry
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", flaky)
    other = replace(load_request, sha256="f" * 64)  # another model in the cache
    cache.get(other)
    rec = Recorder(cache)
    rec.run(batch(load_request, JobPart("j", "a", "", (1, 2))))
    assert calls == [2, 1, 1]  # whole batch, then each image alone
    assert cache.where(other.cache_key) != "device"  # the others made room before the retry
    assert [i.seed for i in rec.of(JobDone)[0].images] == [1, 2]
    pipe, _ = cache.get(load_request)
    assert not pipe.pipeline.vae.use_tiling  # savers are switched off again afterwards

    calls.clear()
    fail_first["n"] = 99
    rec.run(batch(load_request, JobPart("j", "a", "", (1,)), width=128, height=128))
    [failed] = rec.of(BatchFailed)
    assert "out of GPU memory at 128x128" in failed.message


def test_the_worker_runs_every_sampler_name_the_bot_accepts() -> None:
    assert {name for name, spec in SAMPLERS.items() if spec.kdiffusion} == set(SOLVERS)
    assert {name for name, spec in SAMPLERS.items() if not spec.kdiffusion} <= set(SCHEDULERS)
    assert set(ZERO_SNR_SAMPLERS) <= set(SCHEDULERS)


def test_out_of_memory_retry_keeps_img2img_and_hires_settings(
    cache: PipelineCache, load_request: LoadRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-image-at-a-time retry runs the same passes: each image still starts from its picture,
    and a hires job still ends at its hires size."""
    import io

    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    real_call = StableDiffusionImg2ImgPipeline.__call__
    seen: list[tuple[int, float]] = []

    def flaky(self, *args, **kwargs):
        seen.append((len(kwargs["prompt_embeds"]), kwargs["strength"]))
        if len(seen) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionImg2ImgPipeline, "__call__", flaky)
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(picture, format="PNG")
    rec = Recorder(cache)
    # UniPC runs through diffusers' img2img pipeline; A1111's own samplers are the test below.
    rec.run(batch(load_request, JobPart("j", "a", "", (1, 2)), init_png=picture.getvalue(), strength=0.5, sampler="UniPC"))
    assert seen == [(2, 0.5), (1, 0.5), (1, 0.5)] and len(rec.of(JobDone)[0].images) == 2
    seen.clear()
    rec.run(batch(load_request, JobPart("h", "a", "", (3, 4)), hires_scale=2.0, hires_denoise=0.5, sampler="UniPC"))
    [done] = rec.of(JobDone)[-1:]
    assert [Image.open(io.BytesIO(i.png)).size for i in done.images] == [(128, 128), (128, 128)]
    assert [n for n, _ in seen] == [2, 1, 1]  # pass two of the whole batch failed; then image by image


def test_out_of_memory_retry_under_a1111_samplers_starts_each_image_from_its_own_pass(
    cache: PipelineCache, load_request: LoadRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A1111's samplers run img2img and the hires fix's pass two in the text pipeline, from latents
    set up per call: the retry sets them up again for each image (its picture, its noise, its window)."""
    import io

    from diffusers import StableDiffusionPipeline
    from PIL import Image

    real_call = StableDiffusionPipeline.__call__
    seen: list[tuple[int, int, int]] = []

    def flaky(self, *args, **kwargs):
        seen.append((len(kwargs["latents"]), kwargs["latents"].shape[-1], len(self.scheduler.sigmas) - 1))
        if len(seen) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", flaky)
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(picture, format="PNG")
    rec = Recorder(cache)
    rec.run(batch(load_request, JobPart("j", "a", "", (1, 2)), init_png=picture.getvalue(), strength=0.5, steps=10))
    assert len(rec.of(JobDone)[0].images) == 2
    # 10 steps at 0.5: A1111 runs int(0.5 x 10) + 1 = 6 of them (Euler: one model call each)
    assert [(n, width) for n, width, _ in seen] == [(2, 8), (1, 8), (1, 8)] and {steps for *_, steps in seen} == {6}
    seen.clear()
    rec.run(batch(load_request, JobPart("h", "a", "", (3, 4)), hires_scale=2.0, hires_denoise=0.5, steps=4))
    [done] = rec.of(JobDone)[-1:]
    assert [Image.open(io.BytesIO(i.png)).size for i in done.images] == [(128, 128), (128, 128)]
    # pass one of both failed; then image by image, each with its two passes; pass two runs its
    # steps as asked (4), not 4 x 0.5
    assert [(n, width) for n, width, _ in seen] == [(2, 8), (1, 8), (1, 16), (1, 8), (1, 16)]
    assert [steps for *_, steps in seen] == [4, 4, 4, 4, 4]


def test_every_family_in_the_table_has_its_module_in_the_worker() -> None:
    """common/families.py (what the bot knows) and gpu_worker/families/ (what the worker runs) agree."""
    from common.families import FLOW_FAMILIES, SUPPORTED_FAMILIES
    from gpu_worker.families import FAMILIES

    assert tuple(FAMILIES) == SUPPORTED_FAMILIES
    assert tuple(name for name, family in FAMILIES.items() if family.flow) == FLOW_FAMILIES
    assert {FAMILIES[name].gpu_dtype for name in FLOW_FAMILIES} == {torch.bfloat16}  # T5 overflows fp16


def test_a_draw_splits_its_pictures_back_to_its_jobs_and_retries_one_by_one() -> None:
    from common.protocol import JobPart
    from gpu_worker.families.base import Draw

    draw = Draw((JobPart("a", "cat", "", (1, 2)), JobPart("b", "dog", "blur", (7,))))
    assert draw.prompts == ["cat", "cat", "dog"] and draw.negatives == ["", "", "blur"] and draw.seeds == [1, 2, 7]
    pictures = [Image.new("RGB", (1, 1), (value, 0, 0)) for value in (10, 20, 30)]
    assert {job: [p.getpixel((0, 0))[0] for p in got] for job, got in draw.split(pictures).items()} == {
        "a": [10, 20],
        "b": [30],
    }
    singles = draw.one_by_one()
    assert [(d.jobs[0].job_id, d.seeds) for d in singles] == [("a", [1]), ("a", [2]), ("b", [7])]


def test_a_flow_family_refuses_latent_masked_content_before_anything_loads(load_request: LoadRequest) -> None:
    from gpu_worker.families import FAMILIES

    batch = RunBatch.of(
        "b1", replace(load_request, family="flux", name="flux-dev"), (JobPart("j", "a cat", "", (1,)),), 64, 64, 4, 1.0,
        "Euler", "Automatic", mask_png=b"mask", masked_content="latent noise",
    )  # fmt: skip
    assert FAMILIES["flux"].refuses(batch) == "flux-dev: masked content latent noise is for SD checkpoints; choose original or fill"
    assert FAMILIES["sd1"].refuses(batch) is None
    assert FAMILIES["flux"].refuses(replace(batch, parameters=replace(batch.parameters, masked_content="fill"))) is None


def test_the_latent_hires_fix_enlarges_by_the_vaes_own_scale() -> None:
    """The demo model's VAE shrinks 4x, not 8x: a 64 px job at hires 2 is 128 px, by a latent upscaler too."""
    from bot.demo import DEMO_FILE

    ins = inspect_file(DEMO_FILE)
    load = LoadRequest(str(DEMO_FILE), "easel-demo", "sd1", "SD1.x", ins.format, ins.pipeline_config, "epsilon")
    events: list[object] = []
    cache = PipelineCache("cpu", 1 << 40, 0, lambda request: load_pipeline(request, "cpu"))
    runner = BatchRunner("cpu", cache, events.append, lambda job_id: False)
    runner.run(batch(load, JobPart("j", "a red circle", "", (1,)), steps=2, hires_scale=2.0, hires_upscaler="Latent"))
    [done] = [e for e in events if isinstance(e, JobDone)]
    assert Image.open(io.BytesIO(done.images[0].png)).size == (128, 128)


@pytest.mark.parametrize(("sampler", "switched_at"), [("Euler", [2]), ("Heun", [2])])
def test_prompt_editing_switches_at_a1111s_model_call(
    cache: PipelineCache, load_request: LoadRequest, monkeypatch: pytest.MonkeyPatch, sampler: str, switched_at: list[int]
) -> None:
    """A1111 schedules prompt editing over the steps (twice them for a second-order sampler, whose
    model calls it counts) and switches after the call numbered `when`, counting from 0."""
    from gpu_worker.prompt_encoding import Conditioning

    real = Conditioning.replace
    calls: list[int] = []

    def spy(self, step: int, guided: bool) -> dict:
        calls.append(step)
        return real(self, step, guided)

    monkeypatch.setattr(Conditioning, "replace", spy)
    rec = Recorder(cache)
    # Euler, 3 steps: "fox" for calls 0-1, "dog" from call 2. Heun, 3 steps (5 calls): the schedule
    # runs over 6, so [fox:dog:0.34] switches after call int(0.34 x 6) = 2, at call 3; [..:1] at call 2.
    prompt = "a [fox:dog:1]"
    rec.run(batch(load_request, JobPart("j", prompt, "", (1,)), sampler=sampler, steps=3))
    assert calls == switched_at
    calls.clear()
    rec.run(batch(load_request, JobPart("k", "a [fox:dog:0.34]", "", (1,)), sampler=sampler, steps=3))
    assert calls == ([3] if sampler == "Heun" else [2])  # Euler: int(0.34 x 3) = 1, so call 2


@contextlib.contextmanager
def worker_mid_batch(tiny_dir: Path) -> Iterator[tuple[Connection, subprocess.Popen | PreloadedProcess, int]]:
    """The bot's worker as the bot starts it (forked by the preloader, else afresh), running a 400-step
    batch (job "j"): our end of its pipe, once its first step is reported; the process; its stderr's
    read end (the caller reads it to its end)."""
    from bot import preloaded
    from common.protocol import BatchProgress, JobPart, LoadRequest, RunBatch, WorkerReady, decode, encode
    from tests.conftest import REPO

    ours, theirs = socket.socketpair()
    config = json.dumps({"device": "cpu", "log_level": "INFO"})
    err_read, err_write = os.pipe()
    with open(os.devnull, "rb") as quiet:
        worker = preloaded.start(["serve", "--config", config], theirs.fileno(), (quiet.fileno(), err_write, err_write))
    if worker is None:
        worker = subprocess.Popen(
            [sys.executable, "-m", "gpu_worker", "serve", "--fd", str(theirs.fileno()), "--config", config],
            pass_fds=(theirs.fileno(),),
            cwd=REPO,
            stderr=err_write,
        )
    os.close(err_write)
    theirs.close()
    conn = Connection(ours.detach())
    try:
        assert isinstance(decode(conn.recv_bytes()), WorkerReady)
        load = LoadRequest(str(tiny_dir / "tiny-sd1.safetensors"), "tiny", "sd1", "SD1.x", "safetensors", "tiny-sd1")
        batch = RunBatch.of(
            "busy", load, (JobPart("j", "a lighthouse", "", (1,)),), 128, 128, 400, 7.0, "Euler", "Automatic",
            preview_every=2,
        )  # fmt: skip
        conn.send_bytes(encode(batch))
        while not isinstance(decode(conn.recv_bytes()), BatchProgress):
            pass
        yield conn, worker, err_read
    finally:
        conn.close()


def test_a_worker_whose_bot_went_away_ends_quietly(tiny_dir: Path) -> None:
    """The bot dies mid-batch (its end of the pipe closes): the worker's batch ends unseen and the
    process exits 0, without the BrokenPipe tracebacks it once printed for every event it sent."""
    with worker_mid_batch(tiny_dir) as (_conn, worker, err_read):
        pass  # the bot is gone: its end closes
    with os.fdopen(err_read, "r") as errors:
        stderr = errors.read()
    assert worker.wait(120) == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr[-2000:]
    assert "the bot went away" in stderr


def test_shutdown_mid_batch_stops_the_batch_at_its_next_step(tiny_dir: Path) -> None:
    """The bot closing says Shutdown after it has ended every job: the batch in hand is cancelled at its
    next step, not drawn to its end while the bot waits (up to its grace period) to exit."""
    from common.protocol import JobCancelled, JobDone, Shutdown, decode, encode

    with worker_mid_batch(tiny_dir) as (conn, worker, err_read):
        conn.send_bytes(encode(Shutdown()))
        events = []
        with contextlib.suppress(EOFError, OSError):
            while True:
                events.append(decode(conn.recv_bytes()))
    with os.fdopen(err_read, "r") as errors:
        stderr = errors.read()
    assert worker.wait(120) == 0, stderr[-2000:]
    assert JobCancelled("busy", "j") in events and not any(isinstance(e, JobDone) for e in events), events
