"""Build the diffusers scheduler for an A1111 sampler name and schedule type."""

from __future__ import annotations

import diffusers
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from gpu_worker.protocol import SAMPLERS, SCHEDULE_OPTIONS


def make_scheduler(pipeline: DiffusionPipeline, sampler: str, schedule: str) -> SchedulerMixin:
    """A fresh scheduler from the pipeline's own config (betas, prediction type, spacing)."""
    spec = SAMPLERS[sampler]
    scheduler_cls = getattr(diffusers, spec.scheduler)
    options = dict(spec.options) | dict(SCHEDULE_OPTIONS[schedule])
    return scheduler_cls.from_config(pipeline.scheduler.config, **options)
