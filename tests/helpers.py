"""Small builders shared by tests, and the one way a test waits."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.generation.checkpoint_ref import CheckpointRef
from bot.generation.jobs import Job, new_job_id
from bot.generation.service import GenerationService, JobHandle
from bot.rules.limits import GenerationRequest, Limits, validate


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
