"""Chroma: what tells it from FLUX.1, its modulation network's keys both ways, the buffer it keeps
outside its state dict, and jobs through the real worker from the transformer-only file with FLUX.1's
T5-XXL and VAE from the component store, and from an all-in-one file — the same picture either way."""

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
from safetensors.torch import load_file

from bot.checkpoints.inspection import inspect_file
from bot.generation.jobs import Finished
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from common.errors import EaselError
from common.protocol import LoadRequest
from gpu_worker.families.chroma import to_diffusers, to_original
from gpu_worker.loader import load_pipeline
from gpu_worker.testing.tiny_flux import make_tiny_chroma, make_tiny_flux_parts
from tests.a1111_infotext import parse_generation_parameters
from tests.helpers import assert_loaded_as_in_file, jobs_over, under

HOST, HERE = Asker.host(), Place.command_line()


@pytest.fixture(scope="module")
def chroma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("chroma") / "models"
    models.mkdir()
    make_tiny_chroma(models / "Chroma1-HD.safetensors")
    make_tiny_chroma(models / "chroma-aio.safetensors", shape="all-in-one")
    make_tiny_flux_parts(models)
    return models


def test_chroma_is_told_from_flux_and_its_keys_round_trip(chroma_dir: Path) -> None:
    alone = inspect_file(chroma_dir / "Chroma1-HD.safetensors")
    arch = alone.architecture
    assert (arch.family, arch.label, arch.runnable, alone.pipeline_config) == ("chroma", "Chroma (transformer only)", True, "tiny-flux")
    assert arch.needs == (("t5xxl", 32), ("vae", 16)) and arch.decided_by.endswith("distilled_guidance_layer.in_proj.weight")
    assert inspect_file(chroma_dir / "chroma-aio.safetensors").architecture.needs == ()
    original = load_file(str(chroma_dir / "Chroma1-HD.safetensors"))
    converted = to_diffusers(original)
    assert "distilled_guidance_layer.layers.0.linear_1.weight" in converted and "distilled_guidance_layer.norms.1.weight" in converted
    back = to_original(converted)
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)


def test_the_modulation_index_buffer_is_computed_as_diffusers_computes_it(chroma_dir: Path) -> None:
    from diffusers import ChromaTransformer2DModel

    ins = inspect_file(chroma_dir / "chroma-aio.safetensors")
    load = LoadRequest(str(chroma_dir / "chroma-aio.safetensors"), "c", "chroma", ins.architecture.label, "safetensors", ins.pipeline_config, "flow", "c")
    built = load_pipeline(load).pipeline.transformer
    eager = ChromaTransformer2DModel.from_config(built.config)  # every buffer made on the CPU, none loaded
    assert built.time_text_embed.mod_proj.device.type == "cpu"
    assert torch.equal(built.time_text_embed.mod_proj, eager.time_text_embed.mod_proj)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(chroma_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jobs]:
    async with jobs_over(chroma_dir, tmp_path_factory.mktemp("chroma-jobs")) as jobs:
        yield jobs


async def picture(jobs: Jobs, **options) -> tuple[np.ndarray, dict[str, str]]:
    values = {"prompt": "a red fox in the snow", "checkpoint": "chroma1-hd", "seed": 4, "steps": 3, "size": (96, 64)} | options
    [handle] = await jobs.start(await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**values)))
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    image = Image.open(io.BytesIO(done.job.images[0].png))
    return np.asarray(image), parse_generation_parameters(image.info["parameters"])[2]


@pytest.mark.asyncio(loop_scope="module")
async def test_chroma_runs_with_flux_s_parts_and_its_own_defaults(jobs: Jobs, chroma_dir: Path) -> None:
    assert jobs.text_encoders is not None and jobs.vaes is not None
    with pytest.raises(EaselError, match=r"^chroma1-hd needs a T5-XXL text encoder \(put t5xxl_fp16\.safetensors in models/text_encoders\)"):
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="chroma1-hd"))
    for folder in ("text_encoders", "VAE"):
        shutil.copytree(chroma_dir / folder, jobs.registry.models_root / folder)
    await jobs.text_encoders.scan()
    await jobs.vaes.scan()
    plan = await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="chroma1-hd"))
    assert (plan.specs[0].parameters.steps, plan.specs[0].parameters.cfg) == (35, 5.0)  # diffusers' Chroma1-HD settings
    with pytest.raises(EaselError, match=r"DPM\+\+ 2M has no flow form here\. Choose Euler$"):
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="chroma1-hd", sampler="DPM++ 2M"))
    split, params = await picture(jobs, negative="blurry")
    assert (params["CFG scale"], params["Module 1"], params["Module 2"]) == ("5.0", "ae", "t5xxl_fp16")
    assert "Distilled CFG Scale" not in params and split.std() > 1
    whole, _ = await picture(jobs, checkpoint="chroma-aio", negative="blurry")
    assert np.array_equal(split, whole)  # the same weights in either shape: the same picture
    unguided, _ = await picture(jobs, cfg=1.0, negative="blurry")
    assert not np.array_equal(split, unguided)  # CFG runs the negative prompt
    other, _ = await picture(jobs, prompt="a blue boat", negative="blurry")
    assert not np.array_equal(split, other)


def test_every_parameter_of_the_loaded_model_is_the_files(chroma_dir: Path) -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path = chroma_dir / "chroma-aio.safetensors"
    ins = inspect_file(path)
    pipe = load_pipeline(LoadRequest(str(path), "c", "chroma", ins.architecture.label, "safetensors", ins.pipeline_config, "flow", "c")).pipeline
    file = load_file(str(path))

    t5 = under(file, "text_encoders.t5xxl.transformer.")
    t5["encoder.embed_tokens.weight"] = t5["shared.weight"]  # stored once, as `shared`
    expected = {
        "transformer": to_diffusers(under(file, "model.diffusion_model.")),
        "text_encoder": t5,
        "vae": convert_ldm_vae_checkpoint(under(file, "vae."), pipe.vae.config),
    }
    assert_loaded_as_in_file(pipe, expected)
