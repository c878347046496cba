"""Build the diffusers scheduler for an A1111 sampler name and schedule type."""

from __future__ import annotations

from collections.abc import Mapping

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from gpu_worker.protocol import SAMPLERS, SCHEDULE_OPTIONS

# Options a sampler or schedule may set; cleared first so none carries over from the base config.
_RESET = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}


def make_scheduler(base_config: Mapping[str, object], sampler: str, schedule: str) -> SchedulerMixin:
    """A fresh scheduler from the checkpoint's own config (betas, prediction type, spacing)."""
    spec = SAMPLERS[sampler]
    scheduler_cls = getattr(diffusers, spec.scheduler)
    config = {k: v for k, v in base_config.items() if k != "algorithm_type"} | _RESET
    return scheduler_cls.from_config(config, **(dict(spec.options) | dict(SCHEDULE_OPTIONS[schedule])))
