"""k-diffusion's sampling algorithms, as A1111 runs them (k_diffusion/sampling.py at the version
A1111 pins; facts followed, code our own).

Each solver is a generator: it yields `(x, sigma)` when it needs the model's denoised picture of `x`
at noise level `sigma`, is sent that picture back, and returns the final `x`. The model call itself
stays in the diffusers pipeline (gpu_worker/sampling/scheduler.py drives the generator), so prompt
weighting, guidance, previews and inpainting models work unchanged.

`Noise` gives the step noise: `fresh()` is A1111's `randn_like` (the next draw of each picture's own
generator, gpu_worker/noise.py), `between(sigma, sigma_next)` the Brownian tree's increment for the
SDE samplers. eta = 1 and s_noise = 1 (A1111's defaults); s_churn = 0, so Euler, Heun and DPM2
add no noise.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch
from scipy import integrate

CPU = torch.device("cpu")  # the step sizes are scalars, worked out on the CPU
Solver = Generator[tuple[torch.Tensor, float], torch.Tensor, torch.Tensor]


@dataclass
class Noise:
    fresh: Callable[[], torch.Tensor]
    between: Callable[[float, float], torch.Tensor]


def _d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): where the deterministic step lands and how much noise is added back."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - up**2) ** 0.5, up


def _t(sigma: float) -> float:
    return -_log(sigma)


# k-diffusion does this arithmetic on float32 tensors (its sigmas); so do these, value by value.
def _log(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32, device=CPU).log())


def _sigma(t: float) -> float:
    return float(torch.tensor(-t, dtype=torch.float32, device=CPU).exp())


def _expm1(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32, device=CPU).expm1())


def euler(x: torch.Tensor, sigmas: list[float], noise: Noise) -> Solver:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        x = x + _d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def euler_ancestral(x: torch.Tensor, sigmas: list[float], noise: Noise) -> Solver:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        down, up = ancestral_step(sigmas[i], sigmas[i + 1])
        x = x + _d(x, sigmas[i], denoised) * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise.fresh() * up
    return x


def heun(x: torch.Tensor, sigmas: list[float], noise: Noise) -> Solver:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        d = _d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        denoised_2 = yield x_2, sigmas[i + 1]
        x = x + (d + _d(x_2, sigmas[i + 1], denoised_2)) / 2 * dt
    return x


def _log_midpoint(a: float, b: float) -> float:
    """exp(lerp(log a, log b, 0.5)): DPM2's midpoint."""
    return _sigma(-(_log(a) + _log(b)) / 2)


def dpm_2(x: torch.Tensor, sigmas: list[float], noise: Noise) -> Solver:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        d = _d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
            continue
        mid = _log_midpoint(sigmas[i], sigmas[i + 1])
        x_2 = x + d * (mid - sigmas[i])
        denoised_2 = yield x_2, mid
        x = x + _d(x_2, mid, denoised_2) * (sigmas[i + 1] - sigmas[i])
    return x


def dpm_2_ancestral(x: torch.Tensor, sigmas: list[float], noise: Noise) -> Solver:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        down, up = ancestral_step(sigmas[i], sigmas[i + 1])
        d = _d(x, sigmas[i], denoised)
        if down == 0:
            x = x + d * (down - sigmas[i])
        else:
            mid = _log_midpoint(sigmas[i], down)
            x_2 = x + d * (mid - sigmas[i])
            denoised_2 = yield x_2, mid
            x = x + _d(x_2, mid, denoised_2) * (down - sigmas[i])
            x = x + noise.fresh() * up
    return x


def _lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    def product(tau: float) -> float:
        value = 1.0
        for k in range(order):
            if j != k:
                value *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return value

    return float(integrate.quad(product, t[i], t[i + 1], epsrel=1e-4)[0])


def lms(x: torch.Tensor, sigmas: list[float], noise: Noise, order: int = 4) -> Solver:
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        ds = [*ds, _d(x, sigmas[i], denoised)][-order:]
        current = min(i + 1, order)
        coefficients = [_lms_coefficient(current, sigmas, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(ds), strict=False))  # type: ignore[misc]
    return x


def dpmpp_2s_ancestral(x: torch.Tensor, sigmas: list[float], noise: Noise) -> Solver:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        down, up = ancestral_step(sigmas[i], sigmas[i + 1])
        if down == 0:
            x = x + _d(x, sigmas[i], denoised) * (down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - _expm1(-h / 2) * denoised
            denoised_2 = yield x_2, _sigma(s)
            x = (_sigma(t_next) / _sigma(t)) * x - _expm1(-h) * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise.fresh() * up
    return x


def dpmpp_sde(x: torch.Tensor, sigmas: list[float], noise: Noise, r: float = 0.5) -> Solver:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + _d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        down, up = ancestral_step(_sigma(t), _sigma(s))
        s_ = _t(down)
        x_2 = (_sigma(s_) / _sigma(t)) * x - _expm1(t - s_) * denoised
        x_2 = x_2 + noise.between(_sigma(t), _sigma(s)) * up
        denoised_2 = yield x_2, _sigma(s)
        down, up = ancestral_step(_sigma(t), _sigma(t_next))
        t_next_ = _t(down)
        mixed = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - _expm1(t - t_next_) * mixed
        x = x + noise.between(_sigma(t), _sigma(t_next)) * up
    return x


def dpmpp_2m(x: torch.Tensor, sigmas: list[float], noise: Noise) -> Solver:
    old: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        # A1111's last step lands on zero, whose log is -inf: h is then inf and the step is the
        # first-order one, x = denoised.
        t, t_next = _t(sigmas[i]), (_t(sigmas[i + 1]) if sigmas[i + 1] > 0 else float("inf"))
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - _expm1(-h) * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            mixed = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (_sigma(t_next) / _sigma(t)) * x - _expm1(-h) * mixed
        old = denoised
    return x


def dpmpp_2m_sde(x: torch.Tensor, sigmas: list[float], noise: Noise, heun_form: bool = False, eta: float = 1.0) -> Solver:
    old: torch.Tensor | None = None
    h_last = 0.0
    h = 0.0
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = _t(sigmas[i]), _t(sigmas[i + 1])
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * _sigma(eta_h) * x + (-_expm1(-h - eta_h)) * denoised
            if old is not None:
                r = h_last / h
                if heun_form:
                    x = x + ((-_expm1(-h - eta_h)) / (-h - eta_h) + 1) * (1 / r) * (denoised - old)
                else:
                    x = x + 0.5 * (-_expm1(-h - eta_h)) * (1 / r) * (denoised - old)
            x = x + noise.between(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-_expm1(-2 * eta_h)) ** 0.5
        old = denoised
        h_last = h
    return x


def dpmpp_3m_sde(x: torch.Tensor, sigmas: list[float], noise: Noise, eta: float = 1.0) -> Solver:
    denoised_1: torch.Tensor | None = None
    denoised_2: torch.Tensor | None = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = _t(sigmas[i]), _t(sigmas[i + 1])
            h = s - t
            h_eta = h * (eta + 1)
            x = _sigma(h_eta) * x + (-_expm1(-h_eta)) * denoised
            if h_2 is not None and denoised_1 is not None and denoised_2 is not None and h_1 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = _expm1(-h_eta) / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and denoised_1 is not None:
                phi_2 = _expm1(-h_eta) / h_eta + 1
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            x = x + noise.between(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-_expm1(-2 * h * eta)) ** 0.5
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


SOLVERS: dict[str, Callable[[torch.Tensor, list[float], Noise], Solver]] = {
    "Euler": euler,
    "Euler a": euler_ancestral,
    "Heun": heun,
    "LMS": lms,
    "DPM2": dpm_2,
    "DPM2 a": dpm_2_ancestral,
    "DPM++ 2S a": dpmpp_2s_ancestral,
    "DPM++ 2M": dpmpp_2m,
    "DPM++ SDE": dpmpp_sde,
    "DPM++ 2M SDE": dpmpp_2m_sde,
    "DPM++ 2M SDE Heun": lambda x, sigmas, noise: dpmpp_2m_sde(x, sigmas, noise, heun_form=True),
    "DPM++ 3M SDE": dpmpp_3m_sde,
}


def model_sigmas(name: str, sigmas: list[float]) -> list[float]:
    """The noise levels at which `name` calls the model, in order (they depend only on the schedule)."""
    nothing = torch.zeros(1, device=CPU)
    quiet = Noise(fresh=lambda: nothing, between=lambda a, b: nothing)
    solver = SOLVERS[name](nothing, sigmas, quiet)
    asked = []
    try:
        request = next(solver)
        while True:
            asked.append(request[1])
            request = solver.send(nothing)
    except StopIteration:
        return asked
