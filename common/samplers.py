"""The sampler vocabulary people use (A1111's names and schedule types), owned by the bot side.

The bot validates names and schedules here before a job is queued; the worker maps each name to a
diffusers scheduler (gpu_worker/samplers.py), and a test checks that both know the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

# A1111's schedule types (modules/sd_schedulers.py), in its order. Its k-diffusion samplers take them
# all; "Automatic" is each sampler's own default (below). Its "Karras Exponential" is left out.
SCHEDULES = (
    "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
    "Align Your Steps", "Simple", "Normal", "DDIM", "Beta",
)  # fmt: skip
# The schedule types diffusers' own schedulers have (DDIM, UniPC, and EDM, zero-terminal-SNR and flow models).
DIFFUSERS_SCHEDULES = ("Automatic", "Karras", "Exponential")


@dataclass(frozen=True)
class Sampler:
    schedules: tuple[str, ...] = SCHEDULES  # schedule types it supports
    default_schedule: str = "Automatic"  # what "Automatic" means for it (A1111's per-sampler default)
    noisy: bool = False  # draws step noise from the pictures' generators (A1111's `uses_ensd`): ENSD applies
    brownian: bool = False  # its step noise is a Brownian tree seeded with the pictures' seeds (SDE samplers)
    discard_penultimate: bool = False  # A1111 drops the next-to-last sigma (one more step is scheduled)
    second_order: bool = False  # two model calls a step: A1111 schedules prompt editing over twice the steps
    kdiffusion: bool = True  # one of A1111's k-diffusion samplers (gpu_worker/sampling/); else diffusers' only


# A1111's samplers (modules/sd_samplers_kdiffusion.py `samplers_k_diffusion` with their options, and
# the timestep samplers DDIM and UniPC). DPM fast, DPM adaptive and Restart are not offered: their
# step count depends on the run (adaptive) or on a schedule of restarts.
SAMPLERS: dict[str, Sampler] = {
    "DPM++ 2M": Sampler(default_schedule="Karras"),
    "DPM++ SDE": Sampler(default_schedule="Karras", brownian=True, second_order=True),
    "DPM++ 2M SDE": Sampler(default_schedule="Exponential", brownian=True),
    "DPM++ 2M SDE Heun": Sampler(default_schedule="Exponential", brownian=True),
    "DPM++ 2S a": Sampler(default_schedule="Karras", noisy=True, second_order=True),
    "DPM++ 3M SDE": Sampler(default_schedule="Exponential", brownian=True, discard_penultimate=True),
    "Euler a": Sampler(noisy=True),
    "Euler": Sampler(),
    "LMS": Sampler(),
    "Heun": Sampler(second_order=True),
    "DPM2": Sampler(default_schedule="Karras", discard_penultimate=True, second_order=True),
    "DPM2 a": Sampler(default_schedule="Karras", noisy=True, discard_penultimate=True, second_order=True),
    "DDIM": Sampler(schedules=("Automatic",), kdiffusion=False),
    "UniPC": Sampler(schedules=DIFFUSERS_SCHEDULES, kdiffusion=False),
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


def a1111_sampling(sampler: str, family: str, pipeline_variant: str, zero_snr: bool) -> bool:
    """Whether a job runs A1111's k-diffusion form of its sampler (gpu_worker/sampling/): SD1, SD2 and
    SDXL models with their own noise schedule; EDM, zero-terminal-SNR and flow models run diffusers'."""
    return SAMPLERS[sampler].kdiffusion and family in ("sd1", "sd2", "sdxl") and pipeline_variant != "edm" and not zero_snr


def img2img_steps(steps: int, strength: float, exact: bool) -> tuple[int, int]:
    """A1111's `setup_img2img_steps`: (the schedule's steps, t_enc); the sampler runs the schedule's
    last t_enc + 1 steps. `exact`: `steps` are the steps to run (the hires fix's pass two), the
    schedule stretched to fit; otherwise `steps × strength` of them run (rounded down, plus one)."""
    if exact:
        return (int(steps / min(strength, 0.999)) if strength > 0 else 0), steps - 1
    return steps, int(min(strength, 0.999) * steps)


def sampler_labels() -> list[str]:
    """Every sampler by name, then each with a schedule type after it: the texts `parse_sampler` takes."""
    combos = [f"{name} {schedule}" for name, spec in SAMPLERS.items() for schedule in spec.schedules if schedule != "Automatic"]
    return [*SAMPLERS, *combos]


def _folded(name: str) -> str:
    """A schedule type by label or A1111's internal name: "SGM Uniform", "sgm_uniform", "SGMUniform"."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


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
    resolved = next((s for s in SCHEDULES if _folded(s) == _folded(requested)), None)
    spec = SAMPLERS[name]
    if resolved is None or resolved not in spec.schedules:
        raise ValueError(f"sampler {name} does not support the {requested!r} schedule; use {', '.join(spec.schedules)}")
    return name, spec.default_schedule if resolved == "Automatic" else resolved
