"""Easel's samplers against k-diffusion's own code, the library A1111 samples with, on the demo model.

For each of A1111's k-diffusion samplers: the same model (the demo checkpoint's UNet, CFG 7), the
same starting noise and step noise (the pictures' own generators, A1111's GPU source computed here),
the SDE samplers with k-diffusion's own `BrownianTreeNoiseSampler` on one side and Easel's on the
other. Easel's side runs as its pipelines run it: a diffusers-style loop (scale, UNet, guidance on
the noise prediction, `step`) over gpu_worker/sampling/scheduler.py. k-diffusion's side runs as
A1111 runs it: `CompVisDenoiser` around the UNet, guidance on the denoised pictures, the sampler
function, `torch.randn_like` answered by the pictures' generators (A1111's TorchHijack). Printed per
sampler: the largest difference of the sigmas and of the final latents (|latents| reach about 3).

k-diffusion is not one of Easel's dependencies (it pulls in training tools); its two source files
are read from its wheel, which the command takes:
    pip download --no-deps k-diffusion==0.1.1.post1 -d /tmp/kd
    python bench/kdiffusion_parity.py /tmp/kd/k_diffusion-0.1.1.post1-py3-none-any.whl [STEPS]
(writes bench/results/kdiffusion_parity-DATE.json)
"""

from __future__ import annotations

import os
import sys
import types
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.harness import report
from bot.demo import DEMO_FILE
from common.protocol import LoadRequest
from common.samplers import SAMPLERS, parse_sampler
from gpu_worker.loader import load_pipeline
from gpu_worker.noise import PictureNoise, initial_noise
from gpu_worker.sampling.scheduler import A1111Scheduler, Pass
from gpu_worker.sampling.sigmas import sampler_sigmas
from gpu_worker.sampling.solvers import SOLVERS

FUNCTIONS = {
    "Euler": "sample_euler", "Euler a": "sample_euler_ancestral", "Heun": "sample_heun", "LMS": "sample_lms",
    "DPM2": "sample_dpm_2", "DPM2 a": "sample_dpm_2_ancestral", "DPM++ 2S a": "sample_dpmpp_2s_ancestral",
    "DPM++ 2M": "sample_dpmpp_2m", "DPM++ SDE": "sample_dpmpp_sde", "DPM++ 2M SDE": "sample_dpmpp_2m_sde",
    "DPM++ 2M SDE Heun": "sample_dpmpp_2m_sde", "DPM++ 3M SDE": "sample_dpmpp_3m_sde",
}  # fmt: skip
SEEDS = [1234, 1235]
CFG = 7.0


def k_diffusion_from(wheel: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """k_diffusion.sampling and .external from the wheel's source, with the one helper they take from
    its utils (append_dims) and a stand-in for torchdiffeq (used only by samplers not compared here)."""
    package = types.ModuleType("k_diffusion")
    package.__path__ = []
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]  # type: ignore[attr-defined]
    diffeq = types.ModuleType("torchdiffeq")
    diffeq.odeint = None  # type: ignore[attr-defined]
    sys.modules |= {"k_diffusion": package, "k_diffusion.utils": utils, "torchdiffeq": diffeq}
    package.utils = utils  # type: ignore[attr-defined]
    loaded = []
    with zipfile.ZipFile(wheel) as archive:
        for name in ("sampling", "external"):
            module = types.ModuleType(f"k_diffusion.{name}")
            module.__package__ = "k_diffusion"
            sys.modules[module.__name__] = module
            setattr(package, name, module)
            exec(compile(archive.read(f"k_diffusion/{name}.py").decode(), f"k_diffusion/{name}.py", "exec"), module.__dict__)
            loaded.append(module)
    return loaded[0], loaded[1]


class TorchHijack:
    """A1111's: k-diffusion's `torch.randn_like` answered by the pictures' generators."""

    def __init__(self, streams: PictureNoise) -> None:
        self.streams = streams

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.streams.next().to(x.device, x.dtype)

    def __getattr__(self, item: str) -> object:
        return getattr(torch, item)


def main() -> None:
    wheel = Path(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    sampling, external = k_diffusion_from(wheel)
    request = LoadRequest(str(DEMO_FILE), "demo", "sd1", "SD1.x", "safetensors", "demo-sd1", "epsilon", "demo")
    pipe = load_pipeline(request, "cpu").pipeline
    unet, config = pipe.unet, dict(pipe.scheduler.config)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt("a red circle on a blue background", "cpu", 1, True, "")
    cond, uncond = cond.repeat(len(SEEDS), 1, 1), uncond.repeat(len(SEEDS), 1, 1)
    shape = (unet.config.in_channels, 64 // pipe.vae_scale_factor, 64 // pipe.vae_scale_factor)

    class Inner(torch.nn.Module):
        """What k-diffusion's CompVisDenoiser wraps: LDM's model, `apply_model` and `alphas_cumprod`."""

        def __init__(self, alphas_cumprod: torch.Tensor) -> None:
            super().__init__()
            self.alphas_cumprod = alphas_cumprod

        def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            return unet(x, t, encoder_hidden_states=cond).sample

    # LDM's own alphas_cumprod ("linear" betas: linspace of square roots, squared; float64, then held in float32)
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, config["num_train_timesteps"], dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0).to(torch.float32)
    denoiser = external.CompVisDenoiser(Inner(alphas_cumprod))
    low, high = denoiser.sigmas[0].item(), denoiser.sigmas[-1].item()

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([uncond, cond]))
        d_uncond, d_cond = both.chunk(2)
        return d_uncond + CFG * (d_cond - d_uncond)

    results: dict[str, dict[str, float]] = {}
    for name in SOLVERS:
        sampler, schedule = parse_sampler(name)
        spec = SAMPLERS[sampler]
        ours = A1111Scheduler(**{k: config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}, sampler=name)
        their_steps = steps + 1 if spec.discard_penultimate else steps
        if schedule == "Karras":
            theirs_sigmas = sampling.get_sigmas_karras(their_steps, low, high)
        elif schedule == "Exponential":
            theirs_sigmas = sampling.get_sigmas_exponential(their_steps, low, high)
        else:
            theirs_sigmas = denoiser.get_sigmas(their_steps)
        if spec.discard_penultimate:
            theirs_sigmas = torch.cat([theirs_sigmas[:-2], theirs_sigmas[-1:]])
        our_sigmas = sampler_sigmas(ours.model, schedule, steps, spec.discard_penultimate, False)

        # Easel: the diffusers-style loop over the scheduler.
        start, streams = initial_noise("GPU", "cpu", shape, SEEDS)
        sigma_range = (float(our_sigmas[our_sigmas > 0].min()), float(our_sigmas.max()))
        ours.begin(Pass([float(s) for s in our_sigmas], start * our_sigmas[0], streams, SEEDS, sigma_range))
        ours.set_timesteps(steps)
        latents = start * our_sigmas[0]
        with torch.no_grad():
            for t in ours.timesteps:
                scaled = ours.scale_model_input(latents, t)
                eps = unet(torch.cat([scaled, scaled]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
                eps_uncond, eps_cond = eps.chunk(2)
                latents = ours.step(eps_uncond + CFG * (eps_cond - eps_uncond), t, latents).prev_sample

        # k-diffusion, as A1111 calls it.
        start, streams = initial_noise("GPU", "cpu", shape, SEEDS)

        sampling.torch = TorchHijack(streams)

        extra: dict[str, object] = {}
        if spec.brownian:
            positive = theirs_sigmas[theirs_sigmas > 0]
            extra["noise_sampler"] = sampling.BrownianTreeNoiseSampler(start, positive.min(), positive.max(), seed=SEEDS)
        if name == "DPM++ 2M SDE Heun":
            extra["solver_type"] = "heun"
        with torch.no_grad():
            theirs = getattr(sampling, FUNCTIONS[name])(guided, start * theirs_sigmas[0], theirs_sigmas, disable=True, **extra)
        sampling.torch = torch
        results[name] = {
            "schedule": schedule,  # type: ignore[dict-item]
            "sigmas_max_abs_diff": float((our_sigmas - theirs_sigmas).abs().max()),
            "latents_max_abs_diff": float((latents - theirs).abs().max()),
            "latents_max_abs": float(theirs.abs().max()),
        }
        print(f"{name:>20} {schedule:<12} sigmas Δ {results[name]['sigmas_max_abs_diff']:.2e}  latents Δ {results[name]['latents_max_abs_diff']:.2e}")
    report("kdiffusion_parity", {"steps": steps, "seeds": SEEDS, "cfg": CFG, "k_diffusion": wheel.name, "samplers": results})


if __name__ == "__main__":
    main()
