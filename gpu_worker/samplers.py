"""Build the diffusers scheduler for an A1111 sampler name and schedule type.

The names and which schedules each takes are the bot's vocabulary (common/samplers.py),
validated before a job reaches the worker; this maps them to diffusers (its scheduler overview) for
the jobs A1111's own samplers (gpu_worker/sampling/) do not run: DDIM and UniPC, and EDM,
zero-terminal-SNR and flow models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class SchedulerFor:
    scheduler: str  # diffusers scheduler class name
    options: tuple[tuple[str, object], ...] = ()


# The samplers diffusers runs: DDIM and UniPC always, and on a zero-terminal-SNR model the ones whose
# scheduler can rescale its betas (the others run as A1111 runs them, gpu_worker/sampling/).
SCHEDULERS: dict[str, SchedulerFor] = {
    "Euler": SchedulerFor("EulerDiscreteScheduler"),
    "Euler a": SchedulerFor("EulerAncestralDiscreteScheduler"),
    "DPM++ 2M": SchedulerFor("DPMSolverMultistepScheduler"),
    "DPM++ 2M SDE": SchedulerFor("DPMSolverMultistepScheduler", (("algorithm_type", "sde-dpmsolver++"),)),
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

# A flow-matching model's samplers (Flux): diffusers' flow-matching Euler, and the multistep solvers
# in their flow form (`use_flow_sigmas`, `flow_prediction`), which take the pipeline's shift `mu`.
FLOW_SCHEDULERS: dict[str, SchedulerFor] = {
    "Euler": SchedulerFor("FlowMatchEulerDiscreteScheduler"),
    "DPM++ 2M": SchedulerFor("DPMSolverMultistepScheduler", (("algorithm_type", "dpmsolver++"),)),
    "UniPC": SchedulerFor("UniPCMultistepScheduler"),
}
_FLOW_FORM = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "time_shift_type": "exponential"}


def make_scheduler(base_config: Mapping[str, object], sampler: str, schedule: str) -> SchedulerMixin:
    """A fresh scheduler from the checkpoint's own config (betas, prediction type, spacing)."""
    if str(base_config.get("_class_name", "")).startswith("EDM"):
        edm = EDM_SCHEDULERS[sampler]
        config = {k: v for k, v in base_config.items() if k != "algorithm_type"}
        options = dict(edm.options) | {"sigma_schedule": EDM_SCHEDULES[schedule]}
        return getattr(diffusers, edm.scheduler).from_config(config, **options)
    if base_config.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
        return _flow_scheduler(base_config, sampler, schedule)
    spec = SCHEDULERS[sampler]
    scheduler_cls = getattr(diffusers, spec.scheduler)
    config = {k: v for k, v in base_config.items() if k != "algorithm_type"} | _RESET
    return scheduler_cls.from_config(config, **(dict(spec.options) | dict(SCHEDULE_OPTIONS[schedule])))


def _flow_scheduler(base_config: Mapping[str, object], sampler: str, schedule: str) -> SchedulerMixin:
    spec = FLOW_SCHEDULERS[sampler]
    options = dict(spec.options) | dict(SCHEDULE_OPTIONS[schedule])
    config = dict(base_config) | _RESET
    if spec.scheduler != "FlowMatchEulerDiscreteScheduler":
        # The multistep solvers take the shift as exp(mu), mu computed by the pipeline from the image
        # size (FluxPipeline calculate_shift, from base_shift to max_shift). A fixed shift (schnell's
        # 1.0) is the same rule with both ends at log(shift).
        # (base_shift and max_shift are not the solvers' own settings: the pipeline reads them from
        # the config, so they go there.)
        options |= _FLOW_FORM | {"use_dynamic_shifting": True}
        if not base_config.get("use_dynamic_shifting"):
            fixed = math.log(float(base_config.get("shift", 1.0)))  # type: ignore[arg-type]
            config |= {"base_shift": fixed, "max_shift": fixed}
    return getattr(diffusers, spec.scheduler).from_config(config, **options)
