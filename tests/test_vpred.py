"""SDXL's other schedules. v-prediction (NoobAI-XL v-pred and its merges): told apart by their marker
keys, loaded with their schedule (v-prediction, zero terminal SNR), sampled only by samplers that
follow it, and CFG rescale as A1111's extension writes it. EDM (Playground v2.5): its EDM schedule
and latent statistics, and the samplers diffusers has in EDM form."""

from __future__ import annotations

import inspect
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import diffusers
import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from bot.checkpoints.architecture import detect_architecture
from bot.checkpoints.inspection import inspect_checkpoint
from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.generation.jobs import Finished
from bot.generation.service import GenerationService
from bot.images.infotext import parse_infotext
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from bot.rules.limits import Limits
from common.errors import EaselError
from common.protocol import LoadRequest
from common.samplers import ZERO_SNR_SAMPLERS
from common.worker_config import WorkerConfig
from gpu_worker.loader import load_pipeline
from gpu_worker.samplers import SCHEDULERS, make_scheduler
from gpu_worker.testing.tiny import make_tiny_checkpoint
from tests.a1111_infotext import parse_generation_parameters
from tests.test_architecture import SDXL, tensors

HOST, HERE = Asker.host(), Place.command_line()


@pytest.fixture(scope="module")
def vpred_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint("sdxl-vpred", tmp_path_factory.mktemp("vpred") / "tiny-xl-vpred.safetensors", seed=3)


@pytest.fixture(scope="module")
def edm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint("sdxl-edm", tmp_path_factory.mktemp("edm") / "tiny-xl-edm.safetensors", seed=4)


def test_an_edm_model_loads_with_its_schedule_and_latent_statistics(edm_file: Path) -> None:
    inspection = inspect_checkpoint(edm_file)
    assert inspection.architecture.label == "SDXL EDM (Playground v2.5)"
    assert inspection.runnable and inspection.pipeline_config == "tiny-sdxl+edm"
    stray = detect_architecture(tensors({**SDXL, "edm_vpred.sigma_max": (), "edm_vpred.sigma_min": ()}))
    assert not stray.runnable and "edm_vpred.sigma_max" in stray.reason
    arch = inspection.architecture
    loaded = load_pipeline(LoadRequest(str(edm_file), "e", "sdxl", arch.label, "safetensors", "tiny-sdxl+edm", "epsilon"))
    config = loaded.base_scheduler_config
    assert (config["_class_name"], config["sigma_data"], config["sigma_max"], config["sigma_min"]) == (
        "EDMDPMSolverMultistepScheduler",
        0.5,
        80.0,
        0.002,
    )
    vae = loaded.pipeline.vae.config
    assert (vae.scaling_factor, vae.latents_mean) == (0.5, [-1.6574, 1.886, -1.383, 2.5155])  # ComfyUI's constants
    sde = make_scheduler(config, "DPM++ 2M SDE", "Exponential")
    assert (type(sde).__name__, sde.config.algorithm_type, sde.config.sigma_schedule) == (
        "EDMDPMSolverMultistepScheduler",
        "sde-dpmsolver++",
        "exponential",
    )
    assert type(make_scheduler(config, "Euler", "Automatic")).__name__ == "EDMEulerScheduler"
    from gpu_worker.latents import decode, encode

    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    latents = encode(loaded.pipeline.vae, pixels)
    assert torch.allclose(decode(loaded.pipeline.vae, latents), loaded.pipeline.vae.decode(
        latents * torch.tensor(vae.latents_std).view(1, 4, 1, 1) / 0.5 + torch.tensor(vae.latents_mean).view(1, 4, 1, 1)
    ).sample, atol=1e-5)


def test_the_marker_keys_decide_and_inspect_names_them(vpred_file: Path) -> None:
    plain = detect_architecture(tensors({**SDXL, "v_pred": (0,)}))
    assert (plain.label, plain.prediction, plain.prediction_by, plain.zero_snr) == ("SDXL v-prediction", "v", "v_pred", False)
    stray = detect_architecture(tensors({**SDXL, "ztsnr": (0,)}))  # without v_pred it means nothing (ComfyUI)
    assert (stray.prediction, stray.zero_snr) == ("epsilon", False)
    inspection = inspect_checkpoint(vpred_file)
    arch = inspection.architecture
    assert (arch.label, arch.prediction_by, arch.zero_snr) == ("SDXL v-prediction, zero terminal SNR", "v_pred + ztsnr", True)
    assert inspection.runnable and inspection.pipeline_config == "tiny-sdxl"
    assert "modelspec" not in inspection.metadata or "prediction_type" not in inspection.metadata["modelspec"]


def test_the_zero_snr_samplers_are_those_whose_schedulers_can_rescale() -> None:
    can = {
        name
        for name in SCHEDULERS
        if "rescale_betas_zero_snr" in inspect.signature(getattr(diffusers, SCHEDULERS[name].scheduler)).parameters
    }
    assert can == set(ZERO_SNR_SAMPLERS) == set(SCHEDULERS)


def test_the_loaded_schedule_is_v_prediction_rescaled_to_zero_terminal_snr(vpred_file: Path) -> None:
    arch = inspect_checkpoint(vpred_file).architecture
    request = LoadRequest(str(vpred_file), "v", "sdxl", arch.label, "safetensors", "tiny-sdxl", "v", "x" * 64, True)
    loaded = load_pipeline(request)
    config = loaded.base_scheduler_config
    assert (config["prediction_type"], config["rescale_betas_zero_snr"], config["timestep_spacing"]) == (
        "v_prediction",
        True,
        "trailing",
    )
    # One Euler step against the formulas: Lin et al. 2023 algorithm 1 on the model's own betas, then
    # Karras et al.'s Euler step with a v-prediction model's denoised estimate.
    scheduler = make_scheduler(config, "Euler", "Automatic")
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
    root = torch.cumprod(1 - betas, 0).sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])  # zero terminal SNR
    alphas = root**2
    alphas[-1] = 2.0**-24  # diffusers keeps the last sigma finite
    scheduler.set_timesteps(4)
    t, t_next = int(scheduler.timesteps[0]), int(scheduler.timesteps[1])
    assert t == 999  # "trailing": the first step is the pure-noise one
    sigma = ((1 - alphas[t]) / alphas[t]).sqrt()
    sigma_next = ((1 - alphas[t_next]) / alphas[t_next]).sqrt()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64) * sigma
    v = torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64)
    denoised = v * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    expected = sample + (sample - denoised) / sigma * (sigma_next - sigma)
    stepped = scheduler.step(v.float(), scheduler.timesteps[0], sample.float()).prev_sample
    assert torch.allclose(stepped.double(), expected, rtol=1e-3, atol=1e-3)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(
    vpred_file: Path, edm_file: Path, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Jobs]:
    root = tmp_path_factory.mktemp("vpred-jobs")
    (root / "models").mkdir()
    shutil.copy(vpred_file, root / "models" / vpred_file.name)
    shutil.copy(edm_file, root / "models" / edm_file.name)
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", root / "models" / "tiny-sd1.safetensors")
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, root / "models")
    await registry.scan()
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=20))
    await service.start()
    yield Jobs(registry, service, None)
    await service.close()
    await db.close()


async def picture(jobs: Jobs, **options) -> tuple[np.ndarray, dict[str, str]]:
    values = {"prompt": "a fox", "checkpoint": "tiny-xl-vpred", "steps": 4, "seed": 9, "sampler": "Euler"} | options
    [handle] = await jobs.start(await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**values)))
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    image = Image.open(io.BytesIO(done.job.images[0].png))
    return np.asarray(image).astype(float), parse_generation_parameters(image.info["parameters"])[2]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_zero_snr_model_draws_with_its_samplers_and_cfg_rescale_is_written(jobs: Jobs) -> None:
    _, params = await picture(jobs)
    assert params["Model"] == "tiny-xl-vpred" and "CFG Rescale φ" not in params
    rescaled, params = await picture(jobs, cfg=9.0, cfg_rescale=0.7)
    assert params["CFG Rescale φ"] == "0.7"
    unrescaled, _ = await picture(jobs, cfg=9.0)
    assert np.abs(rescaled - unrescaled).mean() > 0.5  # it changes the picture
    info = parse_infotext("a fox\nSteps: 4, Sampler: Euler, CFG scale: 9, Seed: 9, Size: 64x64, Model: tiny-xl-vpred, CFG Rescale φ: 0.7")
    [handle] = await jobs.start(await jobs.plan_from_infotext(HOST, HERE, info))
    assert handle.job.spec.parameters.cfg_rescale == 0.7  # "Make this here" keeps it
    async for _ in handle.events():
        pass
    with pytest.raises(EaselError, match=r"zero-terminal-SNR model; Heun cannot follow its schedule\. Choose one of Euler"):
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="tiny-xl-vpred", sampler="Heun"))
    with pytest.raises(EaselError, match="CFG rescale must be between 0 and 1"):
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="tiny-xl-vpred", cfg_rescale=1.5))
    with pytest.raises(EaselError, match="only for pictures made from text, without the hires fix"):
        options = ImagineOptions.of(prompt="a fox", checkpoint="tiny-sd1", cfg_rescale=0.5, hires_scale=2)
        await jobs.plan_imagine(HOST, HERE, options)


@pytest.mark.asyncio(loop_scope="module")
async def test_an_edm_model_draws_from_text_and_pictures_with_its_samplers(jobs: Jobs) -> None:
    for sampler in ("Euler", "DPM++ 2M", "DPM++ 2M SDE Karras"):
        image, params = await picture(jobs, checkpoint="tiny-xl-edm", sampler=sampler)
        assert image.std() > 1 and params["Model"] == "tiny-xl-edm"
    big, params = await picture(jobs, checkpoint="tiny-xl-edm", hires_scale=2)
    assert big.shape == (128, 128, 3) and params["Hires upscale"] == "2"
    with pytest.raises(EaselError, match=r"EDM model \(Playground v2\.5\); DDIM has no EDM form here\. Choose one of Euler"):
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="tiny-xl-edm", sampler="DDIM"))
