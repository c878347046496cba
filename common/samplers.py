"""The sampler vocabulary people use (A1111's names and schedule types), owned by the bot side.

The bot validates names and schedules here before a job is queued; the worker maps each name to a
diffusers scheduler (gpu_worker/samplers.py), and a test checks that both know the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("Automatic", "Karras", "Exponential")


@dataclass(frozen=True)
class Sampler:
    schedules: tuple[str, ...] = ("Automatic",)  # schedule types it supports
    default_schedule: str = "Automatic"  # what "Automatic" means for it (A1111's per-sampler default)
    noisy: bool = False  # draws fresh noise at each step (ancestral, SDE): A1111's ENSD applies to it


_SIGMA = Sampler(schedules=SCHEDULES)
_KARRAS = Sampler(schedules=SCHEDULES, default_schedule="Karras")
_KARRAS_NOISY = Sampler(schedules=SCHEDULES, default_schedule="Karras", noisy=True)

# A1111 sampler names (modules/sd_samplers_kdiffusion.py samplers_k_diffusion, and DDIM, UniPC).
SAMPLERS: dict[str, Sampler] = {
    "Euler": _SIGMA,
    "Euler a": Sampler(noisy=True),
    "Heun": _SIGMA,
    "LMS": Sampler(),
    "DPM2": _KARRAS,
    "DPM2 a": _KARRAS_NOISY,
    "DPM++ 2M": _KARRAS,
    "DPM++ 2M SDE": _KARRAS_NOISY,
    "DPM++ SDE": _KARRAS_NOISY,
    "DDIM": Sampler(),
    "UniPC": _SIGMA,
}
DEFAULT_SAMPLER = "DPM++ 2M"


# Samplers whose diffusers scheduler can rescale its betas to zero terminal SNR (`rescale_betas_zero_snr`),
# the only ones that follow a `ztsnr` model's schedule; tests/test_vpred.py checks the list against diffusers.
ZERO_SNR_SAMPLERS = ("Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DDIM", "UniPC")


# An EDM model's samplers (Playground v2.5): those diffusers offers in EDM form (gpu_worker/samplers.py).
EDM_SAMPLERS = ("Euler", "DPM++ 2M", "DPM++ 2M SDE")


# A flow-matching model's samplers (Flux), as Forge and ComfyUI offer them and diffusers has them in
# flow form (gpu_worker/samplers.py FLOW_SCHEDULERS); Euler is what BFL, Forge and ComfyUI default to.
FLOW_SAMPLERS = ("Euler", "DPM++ 2M", "UniPC")
FLOW_DEFAULT_SAMPLER = "Euler"


def parse_sampler(text: str, schedule: str | None = None) -> tuple[str, str]:
    """'DPM++ 2M Karras' or ('DPM++ 2M', 'Karras') -> canonical (sampler, schedule); ValueError if unknown."""
    names = {n.lower(): (n, None) for n in SAMPLERS}
    # A1111 before 1.9 folded the schedule into the name ("DPM++ 2M Karras"); accept those too.
    names |= {f"{n} {s}".lower(): (n, s) for n in SAMPLERS for s in SCHEDULES if s != "Automatic"}
    found = names.get(" ".join(text.split()).lower())
    if found is None:
        raise ValueError(f"unknown sampler {text!r}; choose one of: {', '.join(SAMPLERS)}")
    name, implied = found
    requested = schedule or implied or "Automatic"
    resolved = next((s for s in SCHEDULES if s.lower() == requested.lower()), None)
    spec = SAMPLERS[name]
    if resolved is None or resolved not in spec.schedules:
        raise ValueError(f"sampler {name} does not support the {requested!r} schedule; use {', '.join(spec.schedules)}")
    return name, spec.default_schedule if resolved == "Automatic" else resolved
