"""An SD pass under A1111's own samplers (gpu_worker/sampling/): its noise levels, its starting
latents and its noise, set on the pipeline's scheduler before the pipeline runs.

Followed (facts, not code) from A1111 `sd_samplers_kdiffusion.py` (`sample`: x = noise × sigmas[0];
`sample_img2img`: the schedule's last t_enc + 1 steps, x = picture + noise × their first sigma) and
`processing.py` (img2img draws its noise as the first draw of the pictures' generators, variation
seed and seed resize included; the hires fix's pass two draws anew at its own size and runs the
steps asked for; a mask keeps the original latents outside it, at every model call and at the end).
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from common.samplers import SAMPLERS, img2img_steps
from gpu_worker.families.base import BatchRun, Draw, first_noise
from gpu_worker.inpaint_options import latent_mask
from gpu_worker.loaded import LoadedPipeline
from gpu_worker.sampling.scheduler import A1111Scheduler, Pass
from gpu_worker.sampling.sigmas import img2img_window, sampler_sigmas


def a1111_scheduler(loaded: LoadedPipeline, sampler: str) -> A1111Scheduler:
    """The sampler over the checkpoint's own betas and prediction type."""
    config = {key: value for key, value in loaded.base_scheduler_config.items() if not key.startswith("_")}
    known = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
    return A1111Scheduler(**{key: config[key] for key in known if key in config}, sampler=sampler)


def begin_pass(
    run: BatchRun,
    draw: Draw,
    pipe: DiffusionPipeline,
    size: tuple[int, int],
    steps: int,
    picture: torch.Tensor | None = None,
    strength: float = 1.0,
    exact: bool = False,
    mask: Image.Image | None = None,
) -> torch.Tensor:
    """Set up one pass on `pipe.scheduler`; returns the latents the pipeline starts from. `picture`:
    img2img's latents (one per picture, or one for all); `exact`: run `steps` steps (the hires fix)."""
    p, scheduler = run.batch.parameters, pipe.scheduler
    assert isinstance(scheduler, A1111Scheduler)
    spec, sdxl = SAMPLERS[p.sampler], run.batch.load.family == "sdxl"
    total, t_enc = (steps, steps - 1) if picture is None else img2img_steps(steps, strength, exact)
    full = sampler_sigmas(scheduler.model, p.schedule, total, spec.discard_penultimate, sdxl)
    window = full if picture is None else img2img_window(full, total, t_enc)
    start_noise, streams = first_noise(run, draw, pipe, size)
    device = pipe._execution_device
    noise = start_noise.to(device)
    init, keep = None, None
    if picture is None:
        start = noise * window[0]
    else:
        init = picture.to(device, torch.float32).expand_as(noise)
        start = init + noise * window[0]
    if mask is not None and picture is not None:
        keep = (1 - latent_mask(mask, (noise.shape[-1], noise.shape[-2]))).to(device)
    positive = full[full > 0]
    scheduler.begin(
        Pass(
            sigmas=[float(s) for s in window],
            start=start,
            noise=streams,
            seeds=draw.seeds,
            full_range=(float(positive.min()), float(positive.max())),
            init_latent=init if keep is not None else None,
            keep=keep,
        )
    )
    return start.to(run.loaded.dtype)
