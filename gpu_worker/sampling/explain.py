"""What a sampler does with a checkpoint's schedule, without loading its weights: the noise levels
of its steps, where it calls the model, and at which (fractional) timesteps — for `python bot.py
sampler explain`, so a run can be held against A1111's (its sigmas are k-diffusion's)."""

from __future__ import annotations

import torch

from common.protocol import LoadRequest, config_parts
from common.samplers import SAMPLERS, a1111_sampling, img2img_steps
from gpu_worker.families.sd_build import scheduler_config
from gpu_worker.samplers import make_scheduler
from gpu_worker.sampling.sigmas import ModelSigmas, img2img_window, sampler_sigmas
from gpu_worker.sampling.solvers import model_sigmas


def explain(request: LoadRequest, sampler: str, schedule: str, steps: int, denoise: float | None = None) -> dict:
    """`denoise`: from a picture at that strength (A1111's img2img window); None: from text."""
    config = scheduler_config(request)
    own = a1111_sampling(sampler, request.family, config_parts(request.pipeline_config)[1], request.zero_snr)
    if own:
        model = ModelSigmas.from_config(config)
        total, t_enc = (steps, steps - 1) if denoise is None else img2img_steps(steps, denoise, exact=False)
        spec = SAMPLERS[sampler]
        full = sampler_sigmas(model, schedule, total, spec.discard_penultimate, request.family == "sdxl")
        sigmas = full if denoise is None else img2img_window(full, total, t_enc)
        calls = model_sigmas(sampler, [float(s) for s in sigmas])
        timesteps = model.sigma_to_t(torch.tensor(calls, dtype=torch.float32, device="cpu"))
        return {
            "form": "A1111 (k-diffusion)",
            "sampler": sampler,
            "schedule": schedule,
            "steps": len(sigmas) - 1,
            "sigmas": [float(s) for s in sigmas],
            "model_calls": len(calls),
            "call_sigmas": calls,
            "call_timesteps": [float(t) for t in timesteps],
            "model_sigma_min": model.sigma_min,
            "model_sigma_max": model.sigma_max,
        }
    if denoise is not None:
        raise ValueError(f"{sampler} on this model runs through diffusers; --denoise is shown for A1111's own samplers only")
    scheduler = make_scheduler(config, sampler, schedule)
    scheduler.set_timesteps(steps)
    sigmas = getattr(scheduler, "sigmas", None)
    return {
        "form": f"diffusers {type(scheduler).__name__}",
        "sampler": sampler,
        "schedule": schedule,
        "steps": steps,
        "sigmas": [float(s) for s in sigmas] if sigmas is not None else None,
        "model_calls": len(scheduler.timesteps),
        "call_timesteps": [float(t) for t in scheduler.timesteps],
    }
