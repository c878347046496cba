"""Small builders shared by tests."""

from __future__ import annotations

from bot.generation.checkpoint_ref import CheckpointRef
from bot.generation.jobs import Job, new_job_id
from bot.generation.requests import GenerationRequest, Limits, validate


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


def make_job(user: str, *, steps: int = 4, count: int = 1, sha: str = "a" * 64, prompt: str = "a cat") -> Job:
    request = GenerationRequest(prompt=prompt, requester_id=user, steps=steps, count=count, seed=1)
    return Job(new_job_id(), validate(request, checkpoint_ref(sha=sha), Limits()))
