"""A diffusers scheduler that runs one of A1111's k-diffusion samplers inside a pipeline's loop.

A pipeline calls `set_timesteps`, then for each model call `scale_model_input` and `step`. Here the
timesteps are the (fractional) training timesteps of the noise levels the solver asks for, one per
model call (a second-order sampler's extra calls included); `step` turns the model's output into the
denoised picture (k-diffusion's CompVisDenoiser, CompVisVDenoiser for v-prediction), hands it to the
solver and returns the solver's next point. The solver keeps its own float32 latents, as A1111's
loop does, whatever precision the model runs in.

Before a pipeline call the family sets the pass (`begin`): the noise levels to run (a whole schedule,
or A1111's img2img window), the float32 starting latents (noise × sigma_max, or the picture's latents
plus noise × the window's first sigma), each picture's noise stream and, for the SDE samplers, the
Brownian tree seeded with the pictures' seeds. The pipeline is given those starting latents, so
`init_noise_sigma` is 1. With a mask (A1111's img2img with a mask), the denoised picture keeps the
original latents outside the mask at every call and at the end, as A1111's CFGDenoiser does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torchsde
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from common.samplers import SAMPLERS
from gpu_worker.noise import PictureNoise
from gpu_worker.sampling.sigmas import ModelSigmas
from gpu_worker.sampling.solvers import SOLVERS, Noise, Solver, model_sigmas


class BrownianNoise:
    """k-diffusion's BrownianTreeNoiseSampler as A1111 makes it (`create_noise_sampler`): a torchsde
    Brownian tree per picture, its entropy the picture's seed, over the schedule's sigma range."""

    def __init__(self, like: torch.Tensor, sigma_min: float, sigma_max: float, seeds: list[int]) -> None:
        zero = torch.zeros_like(like[0])
        low, high = _f32(sigma_min), _f32(sigma_max)  # float32 tensors, as k-diffusion passes them
        self.trees = [torchsde.BrownianTree(low, zero, high, entropy=int(seed)) for seed in seeds]

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        low, high = _f32(min(sigma, sigma_next)), _f32(max(sigma, sigma_next))
        sign = 1.0 if sigma < sigma_next else -1.0
        with warnings.catch_warnings():
            # A solver's sub-step sigma can sit one float32 step outside the tree's span; torchsde
            # clamps it and says so, in A1111 as here.
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = torch.stack([tree(low, high) for tree in self.trees]) * sign
        return w / (high - low).abs().sqrt()


def _f32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device="cpu")  # torchsde's times, as k-diffusion gives them


@dataclass
class Pass:
    """What one pipeline call samples: see the module's docstring."""

    sigmas: list[float]
    start: torch.Tensor  # float32, on the model's device
    noise: PictureNoise
    seeds: list[int]
    full_range: tuple[float, float]  # the whole schedule's smallest nonzero and largest sigma (the tree's span)
    init_latent: torch.Tensor | None = None  # with a mask: the original latents, float32
    keep: torch.Tensor | None = None  # with a mask: 1 where the original is kept (latent-sized)


class A1111Scheduler(SchedulerMixin, ConfigMixin):
    order = 1
    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
        sampler: str = "Euler",
    ) -> None:
        if sampler not in SOLVERS:
            raise ValueError(f"{sampler} has no k-diffusion form")
        self.model = ModelSigmas.from_config(self.config)
        self.init_noise_sigma = 1.0
        self.timesteps = torch.zeros(0, device="cpu")
        self._pass: Pass | None = None
        self._solver: Solver | None = None
        self._asked: tuple[torch.Tensor, float] | None = None

    def begin(self, sampling: Pass) -> None:
        self._pass = sampling

    @property
    def sigmas(self) -> list[float]:
        """The noise levels the pass steps through (its steps are one fewer)."""
        return self._pass.sigmas if self._pass is not None else []

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None, **_: object) -> None:
        sampling = self._pass
        if sampling is None:
            raise RuntimeError("A1111Scheduler.begin() must set the pass before the pipeline runs")
        asked = model_sigmas(self.config.sampler, sampling.sigmas)
        self.timesteps = self.model.sigma_to_t(torch.tensor(asked, dtype=torch.float32, device="cpu")).to(device)
        self._solver = SOLVERS[self.config.sampler](sampling.start, sampling.sigmas, self._noise(sampling))
        self._asked = next(self._solver)

    def _noise(self, sampling: Pass) -> Noise:
        device = sampling.start.device
        fresh = lambda: sampling.noise.next().to(device)  # noqa: E731
        if not SAMPLERS[self.config.sampler].brownian:
            return Noise(fresh=fresh, between=lambda a, b: fresh())
        tree = BrownianNoise(sampling.start, *sampling.full_range, seeds=sampling.seeds)
        return Noise(fresh=fresh, between=lambda a, b: tree(a, b).to(device))

    def set_begin_index(self, begin_index: int = 0) -> None:
        """The pass's own noise levels are the ones to run: nothing to skip."""

    @property
    def current_sigma(self) -> float:
        assert self._asked is not None
        return self._asked[1]

    def scale_model_input(self, sample: torch.Tensor, timestep: object = None) -> torch.Tensor:
        return (sample.to(torch.float32) / (self.current_sigma**2 + 1) ** 0.5).to(sample.dtype)

    def step(self, model_output: torch.Tensor, timestep: object, sample: torch.Tensor, return_dict: bool = True, **_: object):
        assert self._solver is not None and self._asked is not None and self._pass is not None
        x, sigma = self._asked
        output = model_output.to(torch.float32)
        if self.config.prediction_type == "v_prediction":  # CompVisVDenoiser: c_skip x + c_out v
            denoised = x / (sigma**2 + 1) - output * sigma / (sigma**2 + 1) ** 0.5
        else:  # CompVisDenoiser: x - sigma eps
            denoised = x - output * sigma
        denoised = self._keep_original(denoised)
        try:
            self._asked = self._solver.send(denoised)
            following = self._asked[0]
        except StopIteration as finished:
            following = self._keep_original(finished.value)
        prev = following.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _keep_original(self, latents: torch.Tensor) -> torch.Tensor:
        sampling = self._pass
        if sampling is None or sampling.keep is None or sampling.init_latent is None:
            return latents
        return sampling.init_latent * sampling.keep + (1 - sampling.keep) * latents
