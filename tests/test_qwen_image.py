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
from bot.generation.jobs import Finished
from bot.images.infotext import parse_infotext
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from common.errors import EaselError
from gpu_worker.testing.tiny_flux import make_tiny_component
from gpu_worker.testing.tiny_qwen_image import make_tiny_qwen_image, make_tiny_qwen_image_parts, vae_state
from tests.a1111_infotext import parse_generation_parameters
from tests.helpers import assert_loaded_as_in_file, jobs_over, under

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


def test_inspect_names_qwen_image_its_parts_and_its_edit_models(qwen_dir: Path, tmp_path: Path) -> None:
    alone = inspect_file(qwen_dir / "qwen_image_bf16.safetensors")
    arch = alone.architecture
    assert (arch.family, arch.label, arch.runnable, alone.pipeline_config) == ("qwen-image", "Qwen-Image (transformer only)", True, "tiny-qwen-image")
    assert arch.needs == (("qwen25vl", 32), ("vae", 16)) and arch.decided_by == "txt_norm.weight"
    whole = inspect_file(qwen_dir / "qwen-image-aio.safetensors")
    assert whole.architecture.needs == () and set(whole.components) == {"transformer", "qwen25vl", "vae"}
    plus = inspect_file(qwen_dir / "qwen_image_edit_2509_bf16.safetensors").architecture
    assert (plus.label, plus.variant, plus.runnable) == ("Qwen-Image-Edit Plus (transformer only)", "edit-plus", True)
    first = inspect_file(make_tiny_qwen_image(tmp_path / "qwen_image_edit_bf16.safetensors")).architecture
    assert (first.label, first.variant) == ("Qwen-Image-Edit (transformer only)", "edit")


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
    async with jobs_over(qwen_dir, tmp_path_factory.mktemp("qwen-image-jobs")) as jobs:
        yield jobs


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

    # Qwen-Image-Edit Plus: the pictures read with the instruction; its card's settings, its CFG the guidance
    fox = png((200, 30, 30))
    plan = await jobs.plan_edit(HOST, HERE, "make it night", [fox], checkpoint="qwen_image_edit_2509_bf16", given={"seed": 5, "steps": 2})
    assert (plan.specs[0].parameters.cfg, plan.specs[0].width, plan.specs[0].height) == (4.0, 96, 64)
    edited, edit_text = await picture(jobs, plan=plan)
    _, _, params = parse_generation_parameters(edit_text)
    assert params["Model"] == "qwen_image_edit_2509_bf16" and len(params["Edit images"]) == 64 and params["CFG scale"] == "4.0"
    again, _ = await picture(jobs, plan=await jobs.plan_from_infotext(HOST, HERE, parse_infotext(edit_text)))
    assert np.array_equal(again, edited)  # "Make this here" edits the same kept picture again
    guided = await jobs.plan_edit(HOST, HERE, "make it night", [fox], checkpoint="qwen_image_edit_2509_bf16", guidance=2.5)
    assert (guided.specs[0].parameters.cfg, guided.specs[0].parameters.steps) == (2.5, 40)  # Plus's card: 40 steps
    with pytest.raises(EaselError, match=r"^Qwen-Image-Edit Plus edits with at most 3 input pictures, not 4|^an edit takes at most 3"):
        await jobs.plan_edit(HOST, HERE, "x", [fox] * 4, checkpoint="qwen_image_edit_2509_bf16")
    with pytest.raises(EaselError, match=r"^qwen_image_bf16 \(Qwen-Image \(transformer only\)\) cannot edit pictures"):
        await jobs.plan_edit(HOST, HERE, "x", [fox], checkpoint="qwen_image_bf16")


def png(colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    picture = Image.new("RGB", size, colour)
    picture.paste((255, 255, 255), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_edit_models_read_their_pictures_and_instruction(qwen_dir: Path, tmp_path: Path) -> None:
    from common.protocol import BatchFailed, ComponentUse, JobDone, JobPart, LoadRequest, RunBatch
    from gpu_worker.cache import PipelineCache
    from gpu_worker.loader import load_pipeline
    from gpu_worker.runner import BatchRunner

    parts = (
        ComponentUse("qwen25vl", "qwen_2.5_vl_7b.safetensors", str(qwen_dir / "text_encoders" / "qwen_2.5_vl_7b.safetensors"), "q" * 64),
        ComponentUse("vae", "qwen_image_vae.safetensors", str(qwen_dir / "VAE" / "qwen_image_vae.safetensors"), "v" * 64),
    )
    events: list[object] = []
    cache = PipelineCache("cpu", 1 << 30, 0, lambda r: load_pipeline(r, "cpu"))
    runner = BatchRunner("cpu", cache, events.append, lambda job_id: False)

    def edit(path: Path, instruction: str, *pictures: bytes) -> np.ndarray:
        arch = inspect_file(path).architecture
        load = LoadRequest(str(path), path.stem, "qwen-image", arch.label, "safetensors", "tiny-qwen-image", "flow", path.stem, components=parts, variant=arch.variant)
        hashes = tuple(f"{i:064x}" for i in range(len(pictures)))
        events.clear()
        runner.run(RunBatch.of("b", load, (JobPart("j", instruction, "", (7,)),), 64, 48, 2, 4.0, "Euler", "Automatic", edit_pngs=pictures, edit_images=hashes))
        done = [e for e in events if isinstance(e, JobDone)]
        assert done, [e.message for e in events if isinstance(e, BatchFailed)]
        return np.asarray(Image.open(io.BytesIO(done[0].images[0].png)), dtype=int)

    plus = qwen_dir / "qwen_image_edit_2509_bf16.safetensors"
    red = edit(plus, "make it night", png((200, 30, 30)))
    assert red.shape == (48, 64, 3)
    assert not np.array_equal(red, edit(plus, "make it night", png((30, 30, 200))))  # the picture decides
    assert not np.array_equal(red, edit(plus, "put a hat on it", png((200, 30, 30))))  # the instruction decides
    assert not np.array_equal(red, edit(plus, "make it night", png((200, 30, 30)), png((30, 200, 30), (64, 64))))  # and the second
    first = make_tiny_qwen_image(tmp_path / "qwen_image_edit_bf16.safetensors")  # the first release: one picture, its own pipeline
    assert edit(first, "make it night", png((200, 30, 30))).std() > 1


def test_the_text_encoder_takes_qwen_s_own_names(qwen_dir: Path) -> None:
    from safetensors.torch import load_file

    from common.bundled import CONFIG_ROOT
    from gpu_worker.model_parts import qwen25vl_builder

    state = load_file(str(qwen_dir / "text_encoders" / "qwen_2.5_vl_7b.safetensors"))
    assert {"model.embed_tokens.weight", "visual.patch_embed.proj.weight", "lm_head.weight"} <= state.keys()
    model = qwen25vl_builder(CONFIG_ROOT / "tiny-qwen-image", "text_encoder", torch.float32)("qwen", state)
    assert torch.equal(model.model.visual.patch_embed.proj.weight, state["visual.patch_embed.proj.weight"].float())
    assert torch.equal(model.model.language_model.layers[1].mlp.up_proj.weight, state["model.layers.1.mlp.up_proj.weight"].float())


def test_the_tiny_edit_model_and_its_parts_are_made_where_a_user_keeps_them(env: Path, cli, capsys: pytest.CaptureFixture[str]) -> None:
    """`make-tiny-checkpoint --arch qwen-image-edit --parts` (the worker's tool, in-process here: the CLI's
    own path through it is tested with Kontext's), then what `checkpoints scan` and `inspect` make of it."""
    from gpu_worker.__main__ import main

    models = env / "models"
    assert main(["make-tiny-checkpoint", "--arch", "qwen-image-edit", "--parts", str(models), str(models / "qwen_image_edit_2511_bf16.safetensors")]) == 0
    assert "text_encoders/qwen_2.5_vl_7b.safetensors" in capsys.readouterr().out and (models / "VAE" / "qwen_image_vae.safetensors").is_file()
    scanned = cli("checkpoints", "scan")
    assert scanned.code == 0 and "VAE for Qwen-Image" in scanned.out and "Qwen2.5-VL text encoder (32 wide)" in scanned.out, scanned.out
    inspected = cli("inspect", str(models / "qwen_image_edit_2511_bf16.safetensors"))
    assert "Qwen-Image-Edit Plus (transformer only)" in inspected.out and "up to 3 input pictures" in inspected.out


def test_every_parameter_of_the_loaded_model_is_the_files(qwen_dir: Path) -> None:
    from safetensors.torch import load_file

    from common.protocol import LoadRequest
    from gpu_worker.loader import load_pipeline

    path = qwen_dir / "qwen-image-aio.safetensors"
    ins = inspect_file(path)
    pipe = load_pipeline(LoadRequest(str(path), "q", "qwen-image", ins.architecture.label, "safetensors", ins.pipeline_config, "flow", "q")).pipeline
    file = load_file(str(path))

    encoder = {
        ("model." + k if k.startswith("visual.") else "model.language_model." + k.removeprefix("model.") if k.startswith("model.") else k): v
        for k, v in under(file, "text_encoders.qwen25_7b.transformer.").items()
    }
    expected = {
        "transformer": under(file, "model.diffusion_model."),  # diffusers' names already
        "text_encoder": encoder,
        "vae": convert_wan_vae_to_diffusers(under(file, "vae.")),
    }
    assert_loaded_as_in_file(pipe, expected)
