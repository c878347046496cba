"""Build the diffusers scheduler for an A1111 sampler name and schedule type.

The names and which schedules each takes are the bot's vocabulary (bot/generation/samplers.py),
validated before a job reaches the worker; this maps them to diffusers (its scheduler overview).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class SchedulerFor:
    scheduler: str  # diffusers scheduler class name
    options: tuple[tuple[str, object], ...] = ()


SCHEDULERS: dict[str, SchedulerFor] = {
    "Euler": SchedulerFor("EulerDiscreteScheduler"),
    "Euler a": SchedulerFor("EulerAncestralDiscreteScheduler"),
    "Heun": SchedulerFor("HeunDiscreteScheduler"),
    "LMS": SchedulerFor("LMSDiscreteScheduler"),
    "DPM2": SchedulerFor("KDPM2DiscreteScheduler"),
    "DPM2 a": SchedulerFor("KDPM2AncestralDiscreteScheduler"),
    "DPM++ 2M": SchedulerFor("DPMSolverMultistepScheduler"),
    "DPM++ 2M SDE": SchedulerFor("DPMSolverMultistepScheduler", (("algorithm_type", "sde-dpmsolver++"),)),
    "DPM++ SDE": SchedulerFor("DPMSolverSinglestepScheduler"),
    "DDIM": SchedulerFor("DDIMScheduler"),
    "UniPC": SchedulerFor("UniPCMultistepScheduler"),
}
SCHEDULE_OPTIONS: dict[str, tuple[tuple[str, object], ...]] = {
    "Automatic": (),
    "Karras": (("use_karras_sigmas", True),),
    "Exponential": (("use_exponential_sigmas", True),),
}

# Options a sampler or schedule may set; cleared first so none carries over from the base config.
_RESET = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}


# An EDM model's samplers: the ones diffusers implements in EDM form (sigmas, not betas).
EDM_SCHEDULERS: dict[str, SchedulerFor] = {
    "Euler": SchedulerFor("EDMEulerScheduler"),
    "DPM++ 2M": SchedulerFor("EDMDPMSolverMultistepScheduler", (("algorithm_type", "dpmsolver++"),)),
    "DPM++ 2M SDE": SchedulerFor("EDMDPMSolverMultistepScheduler", (("algorithm_type", "sde-dpmsolver++"),)),
}
EDM_SCHEDULES = {"Automatic": "karras", "Karras": "karras", "Exponential": "exponential"}


def make_scheduler(base_config: Mapping[str, object], sampler: str, schedule: str) -> SchedulerMixin:
    """A fresh scheduler from the checkpoint's own config (betas, prediction type, spacing)."""
    if str(base_config.get("_class_name", "")).startswith("EDM"):
        edm = EDM_SCHEDULERS[sampler]
        config = {k: v for k, v in base_config.items() if k != "algorithm_type"}
        options = dict(edm.options) | {"sigma_schedule": EDM_SCHEDULES[schedule]}
        return getattr(diffusers, edm.scheduler).from_config(config, **options)
    spec = SCHEDULERS[sampler]
    scheduler_cls = getattr(diffusers, spec.scheduler)
    config = {k: v for k, v in base_config.items() if k != "algorithm_type"} | _RESET
    return scheduler_cls.from_config(config, **(dict(spec.options) | dict(SCHEDULE_OPTIONS[schedule])))
