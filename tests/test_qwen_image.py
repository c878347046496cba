"""Qwen-Image: what a file is and what it lacks, its Qwen2.5-VL text encoder and Wan 2.1 VAE in the
component store (a FLUX.1 VAE refused for it, and it for FLUX.1), the VAE's original layout read by
diffusers' converter, and jobs through the real worker from the transformer-only file with its parts
and from an all-in-one file — the same picture either way — and "Make this here"."""

from __future__ import annotations

import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from bot.checkpoints.registry import CheckpointRegistry
from bot.components.registry import VaeRegistry
from bot.components.text_encoders import TextEncoderRegistry
from bot.db import open_database
from bot.generation.jobs import Finished
from bot.generation.service import GenerationService
from bot.images.infotext import parse_infotext
from bot.images.inputs import InputStore
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from bot.rules.limits import Limits
from common.errors import EaselError
from common.worker_config import WorkerConfig
from gpu_worker.testing.tiny_flux import make_tiny_component
from gpu_worker.testing.tiny_qwen_image import make_tiny_qwen_image, make_tiny_qwen_image_parts, vae_state
from tests.a1111_infotext import parse_generation_parameters

HOST, HERE = Asker.host(), Place.command_line()


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder as a ComfyUI user has it for Qwen-Image, an all-in-one file, and an edit model."""
    models = tmp_path_factory.mktemp("qwen-image") / "models"
    models.mkdir()
    make_tiny_qwen_image(models / "qwen_image_bf16.safetensors")
    make_tiny_qwen_image(models / "qwen-image-aio.safetensors", shape="all-in-one")
    make_tiny_qwen_image(models / "qwen_image_edit_2509_bf16.safetensors")
    make_tiny_qwen_image_parts(models)
    return models


def test_inspect_names_qwen_image_its_parts_and_the_edit_model_it_cannot_run_yet(qwen_dir: Path) -> None:
    alone = inspect_file(qwen_dir / "qwen_image_bf16.safetensors")
    arch = alone.architecture
    assert (arch.family, arch.label, arch.runnable, alone.pipeline_config) == ("qwen-image", "Qwen-Image (transformer only)", True, "tiny-qwen-image")
    assert arch.needs == (("qwen25vl", 32), ("vae", 16)) and arch.decided_by == "txt_norm.weight"
    whole = inspect_file(qwen_dir / "qwen-image-aio.safetensors")
    assert whole.architecture.needs == () and set(whole.components) == {"transformer", "qwen25vl", "vae"}
    edit = inspect_file(qwen_dir / "qwen_image_edit_2509_bf16.safetensors").architecture
    assert (edit.label, edit.runnable) == ("Qwen-Image-Edit (transformer only)", False) and "not supported yet" in edit.reason


def test_the_vae_s_original_layout_is_wan_s_as_diffusers_reads_it() -> None:
    from diffusers import AutoencoderKLQwenImage

    original = vae_state()
    assert "decoder.upsamples.3.resample.1.weight" in original and "conv1.weight" in original  # Wan 2.1's names
    converted = convert_wan_vae_to_diffusers(dict(original))
    expected = AutoencoderKLQwenImage.from_config(AutoencoderKLQwenImage.load_config(str(Path(__file__).parent.parent / "common/configs/tiny-qwen-image/vae"))).state_dict()
    assert converted.keys() == expected.keys()
    assert all(converted[k].shape == expected[k].shape for k in expected)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jobs]:
    root = tmp_path_factory.mktemp("qwen-image-jobs")
    models = root / "models"
    shutil.copytree(qwen_dir, models, ignore=shutil.ignore_patterns("text_encoders", "VAE"))
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, models)
    await registry.scan()
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=20))
    await service.start()
    yield Jobs(registry, service, None, inputs=InputStore(root / "inputs"), vaes=VaeRegistry(db, models), text_encoders=TextEncoderRegistry(db, models))
    await service.close()
    await db.close()


async def picture(jobs: Jobs, plan=None, **options) -> tuple[np.ndarray, str]:
    values = {"prompt": "a red fox in the snow", "checkpoint": "qwen_image_bf16", "seed": 4, "steps": 3, "size": (96, 64)} | options
    plan = plan or await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**values))
    [handle] = await jobs.start(plan)
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    image = Image.open(io.BytesIO(done.job.images[0].png))
    return np.asarray(image), image.info["parameters"]


@pytest.mark.asyncio(loop_scope="module")
async def test_qwen_image_runs_with_its_own_parts_and_defaults(jobs: Jobs, qwen_dir: Path) -> None:
    assert jobs.text_encoders is not None and jobs.vaes is not None
    models = jobs.registry.models_root

    async def refused(match: str, **options) -> None:
        values = {"prompt": "a red fox", "checkpoint": "qwen_image_bf16"} | options
        with pytest.raises(EaselError, match=match) as caught:
            await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**values))
        assert "\n" not in str(caught.value) and jobs.generation.status().queued == 0

    await refused(r"^qwen_image_bf16 needs a Qwen2\.5-VL text encoder \(put qwen_2\.5_vl_7b\.safetensors in models/text_encoders\) and a 16-channel VAE \(put qwen_image_vae\.safetensors in models/VAE\)")
    shutil.copytree(qwen_dir / "text_encoders", models / "text_encoders")
    (models / "VAE").mkdir()
    make_tiny_component("flux-vae", models / "VAE" / "ae.safetensors")  # FLUX.1's: 16 channels, but not Qwen-Image's
    await jobs.text_encoders.scan()
    await jobs.vaes.scan()
    await refused(r"a 16-channel VAE \(put qwen_image_vae\.safetensors in models/VAE\)")
    await refused(r"^ae is a VAE for SD3/Flux/Z-Image/Chroma .*; Qwen-Image checkpoints need Wan 2\.1's video VAE", vae="ae")
    shutil.copy(qwen_dir / "VAE" / "qwen_image_vae.safetensors", models / "VAE" / "qwen_image_vae.safetensors")
    await jobs.vaes.scan()
    with pytest.raises(EaselError, match=r"qwen_image_vae is a VAE for Qwen-Image .*; Flux checkpoints need a picture VAE such as ae\.safetensors$"):
        await jobs.vaes.choose("qwen_image_vae", None, "flux")
    await refused(r"^qwen_image_edit_2509_bf16 \(Qwen-Image-Edit \(transformer only\)\) cannot be run: Qwen-Image-Edit is not supported yet", checkpoint="qwen_image_edit_2509_bf16")
    plan = await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="qwen_image_bf16"))
    assert (plan.specs[0].parameters.steps, plan.specs[0].parameters.cfg, plan.specs[0].width) == (50, 4.0, 64)

    split, written = await picture(jobs, negative="blurry")
    _, _, params = parse_generation_parameters(written)
    assert (params["CFG scale"], params["Sampler"], params["Module 1"], params["Module 2"]) == ("4.0", "Euler", "qwen_image_vae", "qwen_2.5_vl_7b")
    assert split.shape == (64, 96, 3) and split.std() > 1
    whole, _ = await picture(jobs, checkpoint="qwen-image-aio", negative="blurry")
    assert np.array_equal(split, whole)  # the same weights in either shape: the same picture
    unguided, _ = await picture(jobs, cfg=1.0, negative="blurry")
    assert not np.array_equal(split, unguided)  # true CFG runs the negative prompt
    other, _ = await picture(jobs, prompt="a blue boat", negative="blurry")
    assert not np.array_equal(split, other)
    again, _ = await picture(jobs, plan=await jobs.plan_from_infotext(HOST, HERE, parse_infotext(written)))
    assert np.array_equal(again, split)  # "Make this here"


def test_the_text_encoder_takes_qwen_s_own_names(qwen_dir: Path) -> None:
    from safetensors.torch import load_file

    from common.bundled import CONFIG_ROOT
    from gpu_worker.model_parts import qwen25vl_builder

    state = load_file(str(qwen_dir / "text_encoders" / "qwen_2.5_vl_7b.safetensors"))
    assert {"model.embed_tokens.weight", "visual.patch_embed.proj.weight", "lm_head.weight"} <= state.keys()
    model = qwen25vl_builder(CONFIG_ROOT / "tiny-qwen-image", "text_encoder", torch.float32)("qwen", state)
    assert torch.equal(model.model.visual.patch_embed.proj.weight, state["visual.patch_embed.proj.weight"].float())
    assert torch.equal(model.model.language_model.layers[1].mlp.up_proj.weight, state["model.layers.1.mlp.up_proj.weight"].float())
