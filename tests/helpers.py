"""Small builders shared by tests, and the one way a test waits."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bot.generation.checkpoint_ref import CheckpointRef
from bot.generation.jobs import Job, Progress, new_job_id
from bot.generation.service import GenerationService, JobHandle
from bot.jobs import Jobs
from bot.rules.limits import GenerationError, GenerationRequest, Limits, validate
from common.protocol import LoadRequest


def checkpoint_ref(
    name: str = "tiny-sd1", sha: str = "a" * 64, path: str = "/models/tiny-sd1.safetensors", **overrides
) -> CheckpointRef:
    values = dict(
        name=name,
        sha256=sha,
        path=path,
        family="sd1",
        architecture="SD1.x",
        format="safetensors",
        pipeline_config="tiny-sd1",
        prediction="epsilon",
        runnable=True,
        reason="",
        present=True,
    )
    return CheckpointRef(**(values | overrides))


async def queue_unchecked(
    service: GenerationService, request: GenerationRequest, checkpoint: CheckpointRef
) -> JobHandle:
    """A job straight into the service's queue, past the place's rules (bot/jobs.py is the one door
    for people): for tests and benches of the queue, the batching and the workers themselves."""
    return await service.admit(validate(request, checkpoint, service.limits))


def make_job(user: str, *, steps: int = 4, count: int = 1, sha: str = "a" * 64, prompt: str = "a cat") -> Job:
    request = GenerationRequest.of(prompt=prompt, requester_id=user, steps=steps, count=count, seed=1)
    return Job(new_job_id(), validate(request, checkpoint_ref(sha=sha), Limits()))


def with_metadata(source: Path, target: Path, metadata: dict[str, str]) -> Path:
    """A copy of a safetensors file with extra `__metadata__` (a new sha256, the same tensors)."""
    import json
    import struct

    raw = source.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"] = {**header.get("__metadata__", {}), **metadata}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])
    return target


# How long a test waits for something the system does by itself before it calls it a hang: long enough
# never to decide a verdict on a loaded machine (the per-test timeout, 300 s, is the outer bound).
HANG_GUARD = 120.0


async def eventually(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Wait for a condition the system reaches by itself (a worker joining, a lease running out);
    the wait is bounded only against a hang, never as a measure of speed."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        reached = condition()
        if inspect.isawaitable(reached):
            reached = await reached
        if reached:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened (waited {HANG_GUARD:.0f} s): {what}")
        await asyncio.sleep(0.02)


def eventually_sync(condition: Callable[[], bool], what: str) -> None:
    """`eventually` for tests that run no event loop."""
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened (waited {HANG_GUARD:.0f} s): {what}")
        time.sleep(0.02)


# Local workers a test has stopped (SIGSTOP), by pid: conftest lets them all go on after every test.
_HELD: set[int] = set()


class HeldWorker:
    """The local worker running a job, stopped (SIGSTOP): the job stays running, however fast the
    machine, until `resume`. A worker of the test's own service, ended by pid."""

    def __init__(self, service: GenerationService, job_id: str) -> None:
        [self.pid] = [w.pid for w in service.status().workers if job_id in w.jobs]
        os.kill(self.pid, signal.SIGSTOP)
        _HELD.add(self.pid)

    def resume(self) -> None:
        if self.pid in _HELD:
            _HELD.discard(self.pid)
            with contextlib.suppress(ProcessLookupError):  # killed meanwhile (a test of that)
                os.kill(self.pid, signal.SIGCONT)


def resume_held_workers() -> None:
    for pid in list(_HELD):
        _HELD.discard(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@dataclass
class Blocker:
    """A job that keeps its worker busy by construction (the worker held once the job runs), so the
    jobs a test queues next wait; `release` lets the worker go on and cancels it."""

    service: GenerationService
    handle: JobHandle
    held: HeldWorker

    @property
    def job(self) -> Job:
        return self.handle.job

    async def release(self) -> None:
        self.held.resume()
        with contextlib.suppress(GenerationError):  # ended meanwhile
            await self.service.cancel(self.handle.job.id)

    async def wait(self) -> None:
        await self.handle.wait()


async def blocker(service: GenerationService, checkpoint: CheckpointRef, user: str = "blocker") -> Blocker:
    """A job that holds the service's worker from its first step until released."""
    request = GenerationRequest.of(prompt="a long job", requester_id=user, steps=150, width=128, height=128)
    handle = await queue_unchecked(service, request, checkpoint)
    async for event in handle.events():
        if isinstance(event, Progress):
            return Blocker(service, handle, HeldWorker(service, handle.job.id))
    raise AssertionError("the blocking job ended before its first step")


def tiny_flux_request(path: Path) -> LoadRequest:
    """A tiny all-in-one Flux dev file made at `path`, and the worker's request for it."""
    from bot.checkpoints.inspection import inspect_file
    from gpu_worker.testing.tiny_flux import make_tiny_flux

    make_tiny_flux(path)
    ins = inspect_file(path)
    return LoadRequest(
        str(path), path.stem, "flux", ins.architecture.label, "safetensors", ins.pipeline_config, "flow", path.stem
    )


@contextlib.asynccontextmanager
async def jobs_over(models: Path, root: Path, *, leave_out: tuple[str, ...] = ("text_encoders", "VAE")) -> AsyncIterator[Jobs]:
    """The real service and a CPU worker over a copy of the models folder `models` (less the folders
    `leave_out`: a test puts the parts there when it wants them found), its checkpoints registered."""
    import shutil

    from bot.checkpoints.registry import CheckpointRegistry
    from bot.components.registry import VaeRegistry
    from bot.components.text_encoders import TextEncoderRegistry
    from bot.db import open_database
    from bot.images.inputs import InputStore
    from common.worker_config import WorkerConfig

    copy = root / "models"
    shutil.copytree(models, copy, ignore=shutil.ignore_patterns(*leave_out))
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, copy)
    await registry.scan()
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=20))
    await service.start()
    try:
        yield Jobs(registry, service, None, inputs=InputStore(root / "inputs"), vaes=VaeRegistry(db, copy), text_encoders=TextEncoderRegistry(db, copy))
    finally:
        await service.close()
        await db.close()


def under(file: dict, prefix: str) -> dict:
    """A file's tensors under `prefix`, named without it."""
    return {k.removeprefix(prefix): v for k, v in file.items() if k.startswith(prefix)}


def assert_loaded_as_in_file(pipe, expected: dict[str, dict]) -> None:
    """Every parameter of each named part of `pipe` is the file's tensor (widened to the part's dtype,
    exactly: bf16 and fp8 widen without rounding), and the part has no other."""
    import torch

    for name, wanted in expected.items():
        loaded = getattr(pipe, name).state_dict()
        assert loaded.keys() == wanted.keys(), name
        assert all(torch.equal(loaded[k], wanted[k].to(loaded[k].dtype)) for k in loaded), name


def png(picture) -> bytes:
    """A PIL picture as PNG bytes (an upload, an init picture, a mask)."""
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def in_process_runner() -> tuple[object, list[object], object]:
    """The worker's own runner and cache on the CPU, in this process: (runner, the events it sent, cache)."""
    from gpu_worker.cache import PipelineCache
    from gpu_worker.loader import load_pipeline
    from gpu_worker.runner import BatchRunner

    events: list[object] = []
    cache = PipelineCache("cpu", 1 << 30, 0, lambda r: load_pipeline(r, "cpu"))
    return BatchRunner("cpu", cache, events.append, lambda job_id: False), events, cache
