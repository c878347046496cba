"""A1111's samplers as A1111 runs them (gpu_worker/sampling/): the schedule types against their
formulas restated here in numpy float64, the solvers against the exact answer on data whose
denoiser is known in closed form (a Gaussian), the diffusers adapter against the solver run alone,
the Brownian tree's batch determinism, and `python bot.py sampler explain`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from bot.demo import DEMO_FILE
from common.protocol import LoadRequest
from common.samplers import SAMPLERS, img2img_steps, parse_sampler
from gpu_worker.noise import PictureNoise, Stream
from gpu_worker.sampling.explain import explain
from gpu_worker.sampling.scheduler import A1111Scheduler, BrownianNoise, Pass
from gpu_worker.sampling.sigmas import (
    AYS_SD1,
    AYS_SDXL,
    ModelSigmas,
    img2img_window,
    sampler_sigmas,
    schedule,
)
from gpu_worker.sampling.solvers import SOLVERS, Noise, model_sigmas

SD = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
# A1111 / ComfyUI print these for SD1.5 with Karras at 10 steps (four decimals).
KARRAS_10 = [14.6146, 9.1029, 5.4784, 3.1686, 1.7494, 0.9141, 0.4469, 0.2014, 0.0819, 0.0292, 0.0]


@pytest.fixture(scope="module")
def model() -> ModelSigmas:
    return ModelSigmas.from_config(SD)


def numpy_sigmas() -> np.ndarray:
    """LDM's schedule restated: betas = linspace(√0.00085, √0.012)², alphas_cumprod held in float32."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    cumprod = np.cumprod(1 - betas).astype(np.float32).astype(np.float64)
    return ((1 - cumprod) / cumprod) ** 0.5


def sigma_at(t: np.ndarray) -> np.ndarray:
    """k-diffusion's t_to_sigma restated: log sigma interpolated linearly between whole timesteps."""
    logs = np.log(numpy_sigmas())
    low, high = np.floor(t).astype(int), np.ceil(t).astype(int)
    w = t - np.floor(t)
    return np.exp((1 - w) * logs[low] + w * logs[high])


def with_zero(values: np.ndarray) -> np.ndarray:
    return np.append(values, 0.0)


def test_the_models_noise_levels_are_sd15s(model: ModelSigmas) -> None:
    assert math.isclose(model.sigma_min, 0.0291675, rel_tol=1e-5) and math.isclose(model.sigma_max, 14.614642, rel_tol=1e-6)
    assert np.allclose(model.sigmas.numpy(), numpy_sigmas(), rtol=1e-6)
    t = torch.tensor([0.0, 1.5, 250.25, 998.9, 999.0])
    assert np.allclose(model.sigma_to_t(model.t_to_sigma(t)).numpy(), t.numpy(), atol=1e-3)


def test_karras_at_ten_steps_is_the_schedule_a1111_prints(model: ModelSigmas) -> None:
    assert [round(float(s), 4) for s in schedule(model, "Karras", 10)] == KARRAS_10


@pytest.mark.parametrize("n", [1, 4, 10, 25])
def test_each_schedule_type_against_its_formula(model: ModelSigmas, n: int) -> None:
    sigmas = numpy_sigmas()
    low, high = sigmas[0], sigmas[-1]
    i = np.arange(n + 1)
    ramp = np.linspace(0, 1, n)
    expected = {
        "Uniform": with_zero(sigma_at(np.linspace(999, 0, n))),
        "Automatic": with_zero(sigma_at(np.linspace(999, 0, n))),
        "Normal": with_zero(sigma_at(np.linspace(999, 0, n))),  # A1111's normal is the model's own spacing
        "SGM Uniform": with_zero(sigma_at(np.linspace(999, 0, n + 1)[:-1])),
        "Karras": with_zero((high ** (1 / 7) + ramp * (low ** (1 / 7) - high ** (1 / 7))) ** 7),
        "Exponential": with_zero(np.exp(np.linspace(np.log(high), np.log(low), n))),
        "Polyexponential": with_zero(np.exp(np.linspace(np.log(high), np.log(low), n))),  # rho 1: the same
        "KL Optimal": np.tan(i / n * np.arctan(low) + (1 - i / n) * np.arctan(high)),
        "Simple": with_zero(np.array([sigmas[-(1 + int(x * 1000 / n))] for x in range(n)])),
        "DDIM": with_zero(sigmas[1 :: max(1000 // n, 1)][::-1]),
        "Beta": with_zero(low + stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6) * (high - low)),
    }
    for name, values in expected.items():
        assert np.allclose(schedule(model, name, n).numpy(), values, rtol=2e-5, atol=1e-7), name


def test_align_your_steps_is_nvidias_table_and_its_log_linear_spread(model: ModelSigmas) -> None:
    """As A1111 has it: the 11-value table as it is for 11 steps, spread log-linearly for any other count."""
    assert schedule(model, "Align Your Steps", 11).tolist() == pytest.approx([*AYS_SD1, 0.0], rel=1e-6)
    assert schedule(model, "Align Your Steps", 11, sdxl=True).tolist() == pytest.approx([*AYS_SDXL, 0.0], rel=1e-6)
    for n in (10, 20):
        spread = np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, 11), np.log(AYS_SD1[::-1])))[::-1]
        values = schedule(model, "Align Your Steps", n).numpy()
        assert np.allclose(values, with_zero(spread), rtol=1e-6)
        assert values[0] == pytest.approx(14.615) and values[-2] == pytest.approx(0.029)


def test_dpm2_drops_the_next_to_last_sigma_and_img2img_runs_a1111s_window(model: ModelSigmas) -> None:
    eleven = schedule(model, "Karras", 11)
    dropped = sampler_sigmas(model, "Karras", 10, discard_penultimate=True, sdxl=False)
    assert len(dropped) == 11 and torch.equal(dropped, torch.cat([eleven[:-2], eleven[-1:]]))
    # A1111's img2img: 20 steps at 0.75 run int(0.75 x 20) + 1 = 16 steps, from the 5th sigma
    total, t_enc = img2img_steps(20, 0.75, exact=False)
    full = schedule(model, "Karras", total)
    assert (total, t_enc) == (20, 15) and torch.equal(img2img_window(full, total, t_enc), full[4:])
    # the hires fix's pass two runs the steps asked (10 at 0.4): a 25-step schedule's last 10
    total, t_enc = img2img_steps(10, 0.4, exact=True)
    assert (total, t_enc) == (25, 9) and len(img2img_window(schedule(model, "Karras", total), total, t_enc)) == 11


def test_schedule_names_as_a1111_writes_and_stores_them() -> None:
    assert parse_sampler("DPM++ 2M SDE") == ("DPM++ 2M SDE", "Exponential")  # A1111's default for it
    assert parse_sampler("Euler a", "sgm_uniform") == ("Euler a", "SGM Uniform")
    assert parse_sampler("DPM++ 2M", "SGMUniform") == ("DPM++ 2M", "SGM Uniform")
    assert parse_sampler("DPM++ 3M SDE Karras") == ("DPM++ 3M SDE", "Karras")  # A1111 before 1.9
    assert parse_sampler("Euler") == ("Euler", "Automatic")  # the model's own spacing: nothing written
    with pytest.raises(ValueError, match="does not support the 'Karras' schedule"):
        parse_sampler("DDIM", "Karras")


# --- the solvers ----------------------------------------------------------------------------------

MU, S = 0.3, 0.5  # data: each number drawn from N(MU, S²), whose denoiser is known exactly


def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def run(name: str, x: torch.Tensor, sigmas: list[float], noise: Noise) -> tuple[torch.Tensor, int]:
    solver = SOLVERS[name](x, sigmas, noise)
    calls = 0
    try:
        request = next(solver)
        while True:
            calls += 1
            request = solver.send(denoise(*request))
    except StopIteration as done:
        return done.value, calls


def no_noise() -> Noise:
    return Noise(fresh=lambda: pytest.fail("an ODE sampler drew noise"), between=lambda a, b: pytest.fail("no tree"))


DETERMINISTIC = ["Euler", "Heun", "LMS", "DPM2", "DPM++ 2M"]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_ode_samplers_land_on_the_exact_solution(model: ModelSigmas, name: str) -> None:
    """The probability-flow ODE of Gaussian data has a closed form: x(0) = MU + (x_T − MU)·S/√(S²+σ_max²)."""
    start = torch.linspace(-3, 3, 101, dtype=torch.float64) * model.sigma_max
    exact = MU + (start - MU) * S / math.sqrt(S**2 + model.sigma_max**2)
    errors = {}
    for steps in (10, 40):
        sigmas = [float(s) for s in sampler_sigmas(model, "Karras", steps, SAMPLERS[name].discard_penultimate, False)]
        sigmas[0] = model.sigma_max
        out, _ = run(name, start.clone(), sigmas, no_noise())
        errors[steps] = float((out - exact).abs().max())
    if name == "Euler":  # first order: four times the steps, about four times closer
        assert errors[40] < errors[10] / 3 and errors[40] < 0.1, errors
    else:  # second order and higher: far more than four times closer
        assert errors[40] < errors[10] / 8 and errors[40] < 5e-3, errors


@pytest.mark.parametrize("name", sorted(set(SOLVERS) - set(DETERMINISTIC)))
def test_noisy_samplers_end_with_the_datas_distribution(model: ModelSigmas, name: str) -> None:
    count, generator = 8000, torch.Generator().manual_seed(1)
    start = torch.randn((1, count), generator=generator, dtype=torch.float64) * model.sigma_max
    sigmas = [float(s) for s in sampler_sigmas(model, "Karras", 100, SAMPLERS[name].discard_penultimate, False)]
    tree = BrownianNoise(start, sigmas[-2], sigmas[0], [7])
    draws = []

    def fresh() -> torch.Tensor:
        draws.append(1)
        return torch.randn((1, count), generator=generator, dtype=torch.float64)

    out, _ = run(name, start, sigmas, Noise(fresh=fresh, between=lambda a, b: tree(a, b).to(torch.float64)))
    # Euler a, first order, is the furthest off: 5 % narrow at 100 steps (11 % at 30, 1 % at 300)
    assert abs(float(out.mean()) - MU) < 0.02 and abs(float(out.std()) - S) < 0.06 * S, (out.mean(), out.std())
    assert bool(draws) == SAMPLERS[name].noisy  # step noise from the pictures' generators only where ENSD applies


def test_model_calls_per_step_as_k_diffusion_makes_them(model: ModelSigmas) -> None:
    sigmas = [float(s) for s in schedule(model, "Karras", 10)]
    one_call = ["Euler", "Euler a", "LMS", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"]
    for name in SOLVERS:  # the last step, onto zero, is a single call for the second-order ones
        assert len(model_sigmas(name, sigmas)) == (10 if name in one_call else 19), name
    heun = model_sigmas("Heun", sigmas)
    assert heun[:3] == [sigmas[0], sigmas[1], sigmas[1]]
    midpoint = model_sigmas("DPM2", sigmas)[1]
    assert midpoint == pytest.approx(math.sqrt(sigmas[0] * sigmas[1]), rel=1e-6)  # a log-space midpoint


def test_euler_a_draws_one_noise_a_step_but_the_last() -> None:
    drawn = []
    stream = PictureNoise([Stream("CPU", "cpu", 3)], (1, 2, 2))
    noise = Noise(fresh=lambda: drawn.append(1) or stream.next(), between=lambda a, b: stream.next())
    x = torch.zeros(1, 1, 2, 2)
    solver = SOLVERS["Euler a"](x, [3.0, 2.0, 1.0, 0.0], noise)
    request = next(solver)
    with pytest.raises(StopIteration):
        while True:
            request = solver.send(request[0] * 0)
    assert len(drawn) == 2


def test_the_brownian_tree_gives_each_picture_its_own_seeds_noise_whatever_the_batch() -> None:
    like = torch.zeros(2, 4, 3, 3)
    both = BrownianNoise(like, 0.03, 14.6, [5, 6])(14.6, 9.0)
    alone = BrownianNoise(like[:1], 0.03, 14.6, [6])(14.6, 9.0)
    assert torch.equal(both[1], alone[0]) and not torch.equal(both[0], both[1])
    again = BrownianNoise(like, 0.03, 14.6, [5, 6])
    assert torch.equal(again(14.6, 9.0), both) and 0.5 < float(again(9.0, 5.0).std()) < 1.5


# --- the diffusers adapter ------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M", "Heun", "Euler a", "DPM++ SDE"])
def test_the_scheduler_in_a_pipelines_loop_equals_the_solver_run_alone(name: str, prediction: str) -> None:
    """A loop as diffusers' pipelines write it (scale the input, call the model, step), the model
    answering in its own parameterisation: the same result as the solver given the denoiser."""
    scheduler = A1111Scheduler(**SD, prediction_type=prediction, sampler=name)
    sigmas = [float(s) for s in schedule(scheduler.model, "Karras", 6)]
    start = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * sigmas[0]

    def streams() -> PictureNoise:
        return PictureNoise([Stream("CPU", "cpu", 1), Stream("CPU", "cpu", 2)], (4, 3, 3))

    scheduler.begin(Pass(sigmas, start, streams(), [1, 2], (sigmas[-2], sigmas[0])))
    scheduler.set_timesteps(6)
    latents = start.clone()
    for t in scheduler.timesteps:
        sigma = scheduler.current_sigma
        scaled = scheduler.scale_model_input(latents, t)
        assert torch.allclose(scaled, latents / math.sqrt(sigma**2 + 1))
        target = denoise(latents, sigma)
        if prediction == "epsilon":
            output = (latents - target) / sigma
        else:  # v = (x·c_skip − denoised) / −c_out, k-diffusion's CompVisVDenoiser inverted
            output = (latents / (sigma**2 + 1) - target) * math.sqrt(sigma**2 + 1) / sigma
        latents = scheduler.step(output, t, latents).prev_sample
    step_noise = streams()
    tree = BrownianNoise(start, sigmas[-2], sigmas[0], [1, 2])
    alone, calls = run(name, start.clone(), sigmas, Noise(fresh=step_noise.next, between=tree))
    assert calls == len(scheduler.timesteps) and torch.allclose(latents, alone, atol=1e-5)


def test_a_mask_keeps_the_original_latents_outside_it() -> None:
    scheduler = A1111Scheduler(**SD, sampler="Euler")
    sigmas = [float(s) for s in schedule(scheduler.model, "Karras", 4)]
    init = torch.full((1, 4, 2, 2), 0.7)
    keep = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    start = init + torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    noise = PictureNoise([Stream("CPU", "cpu", 1)], (4, 2, 2))
    scheduler.begin(Pass(sigmas, start, noise, [1], (sigmas[-2], sigmas[0]), init_latent=init, keep=keep))
    scheduler.set_timesteps(4)
    latents = start
    for t in scheduler.timesteps:
        latents = scheduler.step(torch.zeros_like(latents), t, latents).prev_sample  # the model says: no noise
    assert torch.equal(latents[..., 0, 0], init[..., 0, 0]) and not torch.equal(latents[..., 1, 1], init[..., 1, 1])


# --- the command ----------------------------------------------------------------------------------


def test_sampler_explain_prints_a1111s_sigmas_for_the_demo_model(cli) -> None:
    done = cli("sampler", "explain", "DPM++ 2M", "--steps", "10", "--checkpoint", "demo", "--json")
    assert done.code == 0, done.err
    printed = json.loads(done.out)
    assert printed["schedule"] == "Karras" and [round(s, 4) for s in printed["sigmas"]] == KARRAS_10
    assert printed["model_calls"] == 10 and printed["call_timesteps"][0] == pytest.approx(999.0)
    demo = LoadRequest(str(DEMO_FILE), "demo", "sd1", "SD1.x", "safetensors", "demo-sd1", "epsilon", "demo")
    heun = explain(demo, "Heun", "Karras", 10, denoise=0.5)  # what the command prints without --json
    assert (heun["steps"], heun["model_calls"]) == (6, 11) and heun["sigmas"] == pytest.approx(KARRAS_10[4:], abs=1e-4)
    refused = cli("sampler", "explain", "DDIM", "--steps", "5", "--schedule", "Karras", "--checkpoint", "demo")
    assert refused.code == 1 and refused.err.strip().splitlines()[-1].startswith("error: sampler DDIM does not support the 'Karras' schedule")
