"""VAEs (A1111's "SD VAE"): what a file is, the registry in A1111's and ComfyUI's folders, and a VAE
per job or per checkpoint through the real worker."""

from __future__ import annotations

import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from bot.checkpoints.registry import CheckpointRegistry
from bot.components.detection import VaeFileError, detect_vae
from bot.components.registry import VaeRegistry
from bot.db import open_database
from bot.generation.jobs import Failed, Finished
from bot.generation.service import GenerationService
from bot.images.infotext import parse_infotext
from bot.jobs import Asker, ImagineOptions, Jobs, Place, same_seed
from bot.rules.limits import Limits
from common.errors import EaselError
from common.worker_config import WorkerConfig
from gpu_worker.testing.tiny import make_tiny_vae
from tests.a1111_infotext import parse_generation_parameters

HOST, HERE = Asker.host(), Place.command_line()


def shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in load_file(str(path)).items()}


def test_what_a_vae_file_is(tmp_path: Path, tiny_dir: Path) -> None:
    plain = detect_vae(shapes(make_tiny_vae("sd1", tmp_path / "vae.safetensors")))
    assert (plain.layout, plain.prefix, plain.latent_channels) == ("ldm", "", 4)
    checkpoint = shapes(tiny_dir / "tiny-sd1.safetensors")
    prefixed = {k: v for k, v in checkpoint.items() if k.startswith("first_stage_model.")}
    assert detect_vae(prefixed).prefix == "first_stage_model."
    wide = {"decoder.conv_in.weight": (512, 16, 3, 3), "encoder.conv_out.weight": (32, 512, 3, 3)}
    assert detect_vae(wide).latent_channels == 16 and "SD3/Flux" in detect_vae(wide).label
    diffusers = {"decoder.conv_in.weight": (64, 4, 3, 3), "decoder.up_blocks.0.resnets.0.conv1.weight": (64, 64, 3, 3)}
    assert detect_vae(diffusers).layout == "diffusers"
    for bad, message in ((checkpoint, "a whole checkpoint"), ({"foo": (1,)}, "no decoder.conv_in.weight")):
        with pytest.raises(VaeFileError, match=message):
            detect_vae(bad)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jobs]:
    root = tmp_path_factory.mktemp("vaes")
    models = root / "models"
    (models / "VAE").mkdir(parents=True)
    (models / "vae-comfy" / "vae").mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", models / "tiny-sd1.safetensors")
    make_tiny_vae("sd1", models / "VAE" / "soft.safetensors", seed=5)
    checkpoint = load_file(str(tiny_dir / "tiny-sd1.safetensors"))
    prefixed = {k: v for k, v in checkpoint.items() if k.startswith("first_stage_model.")}
    save_file({k: v * 0.9 for k, v in prefixed.items()}, str(models / "VAE" / "prefixed.safetensors"))
    save_file({"decoder.conv_in.weight": torch.zeros(8, 16, 3, 3)}, str(models / "VAE" / "wide.safetensors"))
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, models)
    await registry.scan()
    vaes = VaeRegistry(db, models)
    report = await vaes.scan()
    assert {e.name for e in report.added} == {"soft", "prefixed", "wide"} and not report.errors
    assert [e.name for e in await registry.list()] == ["tiny-sd1"]  # the checkpoint scan leaves models/VAE alone
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=20))
    await service.start()
    yield Jobs(registry, service, None, vaes=vaes)
    await service.close()
    await db.close()


async def picture(jobs: Jobs, plan=None, **options) -> tuple[np.ndarray, dict[str, str], str]:
    values = {"prompt": "a fox", "checkpoint": "tiny-sd1", "steps": 3, "seed": 4} | options
    plan = plan or await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**values))
    [handle] = await jobs.start(plan)
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    image = Image.open(io.BytesIO(done.job.images[0].png))
    return np.asarray(image).astype(float), parse_generation_parameters(image.info["parameters"])[2], done.job.id


@pytest.mark.asyncio(loop_scope="module")
async def test_a_jobs_vae_replaces_the_checkpoints_own_and_is_written_as_a1111_does(jobs: Jobs) -> None:
    assert jobs.vaes is not None
    own, params, _ = await picture(jobs)
    assert "VAE" not in params and "VAE hash" not in params
    soft, params, job_id = await picture(jobs, vae="soft")
    entry = await jobs.vaes.get("soft")
    assert (params["VAE hash"], params["VAE"]) == (entry.sha256[:10], "soft.safetensors")
    assert np.abs(own - soft).mean() > 1  # another decoder, another picture
    prefixed, _, _ = await picture(jobs, vae="prefixed")  # a VAE kept with its checkpoint prefix loads too
    assert np.abs(own - prefixed).mean() > 0.1
    again, _, _ = await picture(jobs)
    assert np.array_equal(own, again)  # the checkpoint's own VAE is back, bit for bit
    rerun, _, _ = await picture(jobs, plan=await jobs.plan_rerun(HOST, HERE, job_id, seed=same_seed))
    assert np.array_equal(rerun, soft)  # a rerun keeps the job's VAE
    info = parse_infotext(f"a fox\nSteps: 3, Sampler: DPM++ 2M, Seed: 4, Size: 64x64, Model: tiny-sd1, VAE hash: {entry.sha256[:10]}")
    remade, _, _ = await picture(jobs, plan=await jobs.plan_from_infotext(HOST, HERE, info))
    assert np.array_equal(remade, soft)  # "Make this here" finds the VAE by its hash
    with pytest.raises(EaselError, match=r"wide is a VAE for SD3/Flux/Z-Image/Chroma .*SD1 checkpoints need a 4-channel VAE"):
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="tiny-sd1", vae="wide"))
    with pytest.raises(EaselError, match="no VAE named 'nope'"):
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="tiny-sd1", vae="nope"))


@pytest.mark.asyncio(loop_scope="module")
async def test_a_checkpoints_default_vae_applies_unless_the_job_says_none(jobs: Jobs) -> None:
    assert jobs.vaes is not None
    own, _, _ = await picture(jobs, vae="none")
    soft = await jobs.vaes.get("soft")
    await jobs.registry.edit("tiny-sd1", vae_sha256=await jobs.vaes.default_sha256("soft", "sd1"))
    try:
        _, params, _ = await picture(jobs)
        assert params["VAE"] == "soft.safetensors" and params["VAE hash"] == soft.sha256[:10]
        plain, params, _ = await picture(jobs, vae="none")
        assert "VAE" not in params and np.array_equal(plain, own)
        gone = make_tiny_vae("sd1", jobs.vaes.folders[0] / "gone.safetensors", seed=9)
        await jobs.vaes.add(gone)
        gone.unlink()  # the file goes behind the registry's back, before any worker loaded it
        plan = await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="tiny-sd1", vae="gone"))
        [handle] = await jobs.start(plan)
        done = [event async for event in handle.events()][-1]
        assert isinstance(done, Failed) and done.message.startswith("the VAE gone.safetensors is no longer on disk")
    finally:
        await jobs.registry.edit("tiny-sd1", vae_sha256="")


async def test_every_hostile_file_in_the_vae_folder_is_refused_by_name(tmp_path: Path) -> None:
    from tests.hostile_files import scan_hostile_folder

    made, report = await scan_hostile_folder(tmp_path, "VAE", VaeRegistry)
    refused = dict(report.errors)
    assert not report.added and set(refused) == set(made)
    assert all("\n" not in reason for reason in refused.values())
