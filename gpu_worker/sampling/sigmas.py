"""Noise levels: the model's own (one per training timestep) and the schedule types A1111 offers.

Facts followed (not code): k-diffusion `external.DiscreteSchedule` (sigmas from the model's
alphas_cumprod, `sigma_to_t`/`t_to_sigma` by linear interpolation of log sigma, `get_sigmas`),
`sampling.get_sigmas_karras/exponential/polyexponential`; A1111 `modules/sd_schedulers.py` (the
schedule types, Align Your Steps' tables and log-linear interpolation, the beta schedule's 0.6/0.6)
and `sd_samplers_kdiffusion.py get_sigmas` (sigma min/max from the model, a sampler's default
schedule, "discard penultimate sigma" for DPM2 and DPM++ 3M SDE). LDM's "linear" beta schedule is
diffusers' "scaled_linear": betas = linspace(√start, √end)², computed in float64, alphas_cumprod
then held in float32 as the LDM model holds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from scipy import stats

# Schedules are a few dozen numbers: computed on the CPU in float32, as k-diffusion computes them.
CPU = torch.device("cpu")
# A1111 shared_options: the beta schedule's default shape.
BETA_ALPHA = BETA_BETA = 0.6

# Align Your Steps (NVIDIA's published 10-step schedules, as A1111 lists them), highest first.
AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


class ModelSigmas:
    """The noise level of each training timestep, and conversions between sigma and (fractional) t."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        cumprod = alphas_cumprod.to(torch.float32)
        self.sigmas = ((1 - cumprod) / cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> ModelSigmas:
        """From a diffusers scheduler config (the checkpoint's own betas)."""
        count = int(config.get("num_train_timesteps", 1000))  # type: ignore[arg-type]
        start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))  # type: ignore[arg-type]
        kind = config.get("beta_schedule", "scaled_linear")
        if config.get("trained_betas"):
            betas = torch.tensor(config["trained_betas"], dtype=torch.float64, device=CPU)  # type: ignore[arg-type]
        elif kind == "scaled_linear":
            betas = torch.linspace(start**0.5, end**0.5, count, dtype=torch.float64, device=CPU) ** 2
        elif kind == "linear":
            betas = torch.linspace(start, end, count, dtype=torch.float64, device=CPU)
        else:
            raise ValueError(f"no k-diffusion form for the {kind!r} beta schedule")
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.to(torch.float32).log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        low_log, high_log = self.log_sigmas[low], self.log_sigmas[high]
        w = ((low_log - log_sigma) / (low_log - high_log)).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float32)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def uniform(self, n: int) -> torch.Tensor:
        """k-diffusion's `get_sigmas`: n timesteps evenly from the last to the first, then zero."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n, dtype=torch.float32, device=CPU)
        return _append_zero(self.t_to_sigma(t))


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.to(torch.float32), sigmas.new_zeros([1], dtype=torch.float32)])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float32, device=CPU)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((high + ramp * (low - high)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float32, device=CPU).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n, dtype=torch.float32, device=CPU) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def sgm_uniform(model: ModelSigmas, n: int) -> torch.Tensor:
    start = model.sigma_to_t(torch.tensor(model.sigma_max, dtype=torch.float32, device=CPU))
    end = model.sigma_to_t(torch.tensor(model.sigma_min, dtype=torch.float32, device=CPU))
    return _append_zero(torch.stack([model.t_to_sigma(t) for t in torch.linspace(float(start), float(end), n + 1, dtype=torch.float32, device=CPU)[:-1]]))


def normal(model: ModelSigmas, n: int) -> torch.Tensor:
    start = model.sigma_to_t(torch.tensor(model.sigma_max, dtype=torch.float32, device=CPU))
    end = model.sigma_to_t(torch.tensor(model.sigma_min, dtype=torch.float32, device=CPU))
    return _append_zero(torch.stack([model.t_to_sigma(t) for t in torch.linspace(float(start), float(end), n, dtype=torch.float32, device=CPU)]))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Tangent-spaced (A1111's KL Optimal); its last value is sigma_min itself, as A1111 leaves it."""
    low, high = math.atan(sigma_min), math.atan(sigma_max)
    steps = torch.arange(n + 1, dtype=torch.float32, device=CPU)
    return torch.tan(steps / n * low + (1.0 - steps / n) * high).to(torch.float32)


def align_your_steps(n: int, sdxl: bool) -> torch.Tensor:
    table = AYS_SDXL if sdxl else AYS_SD1
    if n == len(table):
        return _append_zero(torch.tensor(table, dtype=torch.float32, device=CPU))
    xs = np.linspace(0, 1, len(table))
    ys = np.log(np.array(table[::-1]))
    spread = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return _append_zero(torch.tensor(spread, dtype=torch.float32, device=CPU))


def simple(model: ModelSigmas, n: int) -> torch.Tensor:
    stride = len(model.sigmas) / n
    return _append_zero(torch.stack([model.sigmas[-(1 + int(x * stride))] for x in range(n)]))


def ddim(model: ModelSigmas, n: int) -> torch.Tensor:
    stride = max(len(model.sigmas) // n, 1)
    picked = [model.sigmas[x] for x in range(1, len(model.sigmas), stride)]
    return _append_zero(torch.stack(picked[::-1]))


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = BETA_ALPHA, b: float = BETA_BETA) -> torch.Tensor:
    quantiles = [float(stats.beta.ppf(x, alpha, b)) for x in 1 - np.linspace(0, 1, n)]
    return _append_zero(torch.tensor([sigma_min + q * (sigma_max - sigma_min) for q in quantiles], dtype=torch.float32, device=CPU))


def schedule(model: ModelSigmas, name: str, n: int, sdxl: bool = False) -> torch.Tensor:
    """`n` steps' noise levels (n + 1 values, ending at zero) for an A1111 schedule type.
    "Automatic" here means the model's own spacing (a sampler's default is resolved before)."""
    low, high = model.sigma_min, model.sigma_max
    makers = {
        "Automatic": lambda: model.uniform(n),
        "Uniform": lambda: model.uniform(n),
        "Karras": lambda: karras(n, low, high),
        "Exponential": lambda: exponential(n, low, high),
        "Polyexponential": lambda: polyexponential(n, low, high),
        "SGM Uniform": lambda: sgm_uniform(model, n),
        "KL Optimal": lambda: kl_optimal(n, low, high),
        "Align Your Steps": lambda: align_your_steps(n, sdxl),
        "Simple": lambda: simple(model, n),
        "Normal": lambda: normal(model, n),
        "DDIM": lambda: ddim(model, n),
        "Beta": lambda: beta(n, low, high),
    }
    if name not in makers:
        raise ValueError(f"unknown schedule type {name!r}")
    return makers[name]()


def sampler_sigmas(model: ModelSigmas, schedule_name: str, steps: int, discard_penultimate: bool, sdxl: bool) -> torch.Tensor:
    """A sampler's noise levels for `steps` steps, as A1111's `get_sigmas`: DPM2's samplers draw one
    more and drop the next-to-last (their last step would otherwise land on sigma_min)."""
    sigmas = schedule(model, schedule_name, steps + 1 if discard_penultimate else steps, sdxl)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def img2img_window(sigmas: torch.Tensor, steps: int, t_enc: int) -> torch.Tensor:
    """A1111's `sample_img2img`: the last `t_enc + 1` steps of a `steps`-step schedule."""
    return sigmas[steps - t_enc - 1 :]
