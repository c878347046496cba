"""Jobs and the events a front end receives about them."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property

from bot.rules.limits import ValidRequest
from common.protocol import ImageResult, denoising_steps, hires_size


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the bot stopped while it was queued or running

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Job:
    id: str
    spec: ValidRequest
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    device: str | None = None
    batch_size: int | None = None
    load_seconds: float | None = None
    inference_seconds: float | None = None
    images: tuple[ImageResult, ...] = ()
    maps: tuple[ImageResult, ...] = ()  # its ControlNet units' maps (common/control.py), checked as pictures
    said: tuple[str, ...] = ()  # what the worker found to say of it (the detail pass found no face)
    attempts: int = 0  # times the worker running it was lost (bot/generation/remote.py)

    @property
    def requester_id(self) -> str:
        return self.spec.request.requester_id

    @property
    def image_count(self) -> int:
        return len(self.spec.seeds)

    @cached_property
    def batch_key(self) -> tuple[object, ...]:
        """Jobs with equal keys can share one pipeline call: the same parameters but for each job's
        own prompt, negative and seeds, and the same files (a new parameter keeps its jobs apart
        without a word here)."""
        s = self.spec
        shared = replace(s.parameters, prompt="", negative="", seed=-1, count=1)
        # A transformer-only checkpoint's text encoders and VAE, the job's VAE and its LoRAs (at their
        # strengths) apply to the whole pipeline call.
        return (s.checkpoint.sha256, s.checkpoint.components, s.vae, s.loras, s.controlnets, s.detectors, shared)

    @property
    def work_units(self) -> float:
        """Cost relative to one step of one 512x512 image, for ETAs."""
        s = self.spec
        units = s.denoising_steps * self.image_count * s.width * s.height / (512 * 512)
        if s.parameters.hires_scale:  # pass two, at its size
            big_w, big_h = hires_size(s.width, s.height, s.parameters.hires_scale)
            steps = max(1, denoising_steps(s.parameters.hires_steps or s.parameters.steps, s.parameters.hires_denoise))
            units += steps * self.image_count * big_w * big_h / (512 * 512)
        return units


# --- events for front ends -------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    job_id: str
    position: int  # 1 = next
    eta_seconds: float | None  # None until the service has measured its speed


@dataclass(frozen=True)
class Started:
    job_id: str
    batch_size: int  # images in the pipeline call this job is part of


@dataclass(frozen=True)
class Loading:
    job_id: str
    checkpoint: str
    cache: str  # device | cpu | disk


@dataclass(frozen=True)
class Progress:
    job_id: str
    step: int
    total: int
    it_per_s: float
    eta_seconds: float | None


@dataclass(frozen=True)
class Preview:
    job_id: str
    step: int
    png: bytes
    nsfw_score: float | None = None  # the picture check's, of this preview; None: not checked


@dataclass(frozen=True)
class Finished:
    job: Job


@dataclass(frozen=True)
class Failed:
    job_id: str
    message: str


@dataclass(frozen=True)
class Cancelled:
    job_id: str


JobEvent = Queued | Started | Loading | Progress | Preview | Finished | Failed | Cancelled
TERMINAL = (Finished, Failed, Cancelled)
