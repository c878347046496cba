"""SD3 and SD3.5 (Large, Medium, SD3 Medium): SAI's key layout, what a file is and what it lacks,
every parameter loaded as the file has it, and jobs through the real worker from SAI's shape (the
text encoders apart) and from an all-in-one file."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from PIL import Image
from safetensors.torch import load_file

from bot.checkpoints.inspection import inspect_file
from bot.checkpoints.registry import CheckpointRegistry
from bot.components.registry import VaeRegistry
from bot.components.text_encoders import TextEncoderRegistry
from bot.db import open_database
from bot.generation.jobs import Finished
from bot.generation.service import GenerationService
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from bot.rules.limits import Limits
from common.bundled import CONFIG_ROOT
from common.errors import EaselError
from common.protocol import LoadRequest
from common.worker_config import WorkerConfig
from gpu_worker.families.sd3_layout import to_diffusers, to_original
from gpu_worker.loader import load_pipeline
from gpu_worker.testing.tiny_flux import make_tiny_component
from gpu_worker.testing.tiny_sd3 import make_tiny_sd3, transformer_state
from tests.a1111_infotext import parse_generation_parameters

HOST, HERE = Asker.host(), Place.command_line()


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny SD3.5 files of one seed, as a ComfyUI/Forge models folder: SAI's shape (Large's and
    Medium's blocks), an all-in-one file, and the three text encoders apart."""
    root = tmp_path_factory.mktemp("sd3") / "models"
    (root / "text_encoders").mkdir(parents=True)
    for arch in ("sd35", "sd35-medium", "sd35-all-in-one"):
        make_tiny_sd3(root / f"{arch}.safetensors", arch)
    for kind, name in (("sd3-clip-l", "clip_l"), ("sd3-clip-g", "clip_g"), ("sd3-t5xxl", "t5xxl_fp16")):
        make_tiny_component(kind, root / "text_encoders" / f"{name}.safetensors")
    return root


def test_sais_layout_round_trips_with_its_reorderings() -> None:
    original = transformer_state(seed=2, medium=True)
    assert "joint_blocks.0.x_block.attn2.qkv.weight" in original and "pos_embed" in original
    diffusers = to_diffusers(original)
    q, k, v = (diffusers[f"transformer_blocks.0.attn2.to_{p}.weight"] for p in "qkv")
    assert torch.equal(original["joint_blocks.0.x_block.attn2.qkv.weight"], torch.cat([q, k, v]))
    # the last block's context norm and the final norm store (shift, scale); diffusers (scale, shift)
    shift, scale = original["joint_blocks.1.context_block.adaLN_modulation.1.weight"].chunk(2)
    assert torch.equal(diffusers["transformer_blocks.1.norm1_context.linear.weight"], torch.cat([scale, shift]))
    assert torch.equal(diffusers["transformer_blocks.0.norm1_context.linear.weight"], original["joint_blocks.0.context_block.adaLN_modulation.1.weight"])
    back = to_original(diffusers)
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)
    with pytest.raises(ValueError, match=r"unknown SD3 tensor 'joint_blocks\.0\.x_block\.nonsense\.weight'"):
        to_diffusers(original | {"joint_blocks.0.x_block.nonsense.weight": torch.zeros(1)})


def test_inspect_names_each_release_and_what_it_lacks(sd3_dir: Path) -> None:
    sai = inspect_file(sd3_dir / "sd35.safetensors")
    assert (sai.architecture.variant, sai.pipeline_config, sai.architecture.runnable) == ("large", "tiny-sd3", True)
    assert sai.architecture.needs == (("clip_l", 0), ("clip_g", 0), ("t5xxl", 80))  # the VAE is inside
    assert set(sai.components) == {"transformer", "vae"}
    medium = inspect_file(sd3_dir / "sd35-medium.safetensors").architecture
    assert (medium.label, medium.variant) == ("SD3.5 Medium", "medium")
    whole = inspect_file(sd3_dir / "sd35-all-in-one.safetensors")
    assert whole.architecture.needs == () and set(whole.components) == {"transformer", "clip_l", "clip_g", "t5xxl", "vae"}


@pytest.mark.parametrize(
    "overrides,label,parameters",
    [
        ({}, "SD3.5 Large", 8.1e9),
        ({"num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536, "pos_embed_max_size": 384, "dual_attention_layers": list(range(13))}, "SD3.5 Medium", 2.5e9),
        ({"num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536, "qk_norm": None}, "SD3 Medium", 2.0e9),
    ],
)
def test_the_bundled_real_config_fits_each_release(overrides: dict, label: str, parameters: float) -> None:
    """On the meta device (no memory): each release's MMDiT in SAI's layout (its published size) is named, picks the
    `sd3` folder, maps back to its own config, and needs CLIP-L, CLIP-G and T5-XXL of the real widths."""
    from diffusers import SD3Transformer2DModel

    from bot.checkpoints.architecture import detect_architecture
    from bot.checkpoints.pipeline_config import choose_pipeline_config
    from common.tensors import TensorInfo
    from gpu_worker.families.sd3_layout import transformer_config

    bundled = json.loads((CONFIG_ROOT / "sd3" / "transformer" / "config.json").read_text())
    settings = bundled | overrides
    with torch.device("meta"):
        model = SD3Transformer2DModel.from_config(settings)
    original = to_original(model.state_dict())
    assert abs(sum(t.numel() for t in original.values()) / parameters - 1) < 0.05  # SAI's round figures
    shapes = {k: tuple(v.shape) for k, v in original.items()}
    derived = transformer_config(shapes, bundled)
    assert {k: derived[k] for k in settings if k != "sample_size"} == {k: settings[k] for k in settings if k != "sample_size"}
    tensors = {f"model.diffusion_model.{k}": TensorInfo(f"model.diffusion_model.{k}", "BF16", s) for k, s in shapes.items()}
    tensors["first_stage_model.decoder.conv_in.weight"] = TensorInfo("first_stage_model.decoder.conv_in.weight", "BF16", (512, 16, 3, 3))
    arch = detect_architecture(tensors)
    assert arch.label == label and choose_pipeline_config(arch, tensors) == ("sd3", "")
    assert arch.needs == (("clip_l", 768), ("clip_g", 1280), ("t5xxl", 4096))


def request(path: Path, root: Path | None = None) -> LoadRequest:
    from common.protocol import ComponentUse

    ins = inspect_file(path)
    components = ()
    if root is not None:
        components = tuple(
            ComponentUse(role, f"{name}.safetensors", str(root / "text_encoders" / f"{name}.safetensors"), role * 8)
            for role, name in (("clip_l", "clip_l"), ("clip_g", "clip_g"), ("t5xxl", "t5xxl_fp16"))
        )
    return LoadRequest(str(path), path.stem, "sd3", ins.architecture.label, "safetensors", ins.pipeline_config, "flow", path.stem, components=components)


def test_every_parameter_of_the_loaded_model_is_the_files(sd3_dir: Path) -> None:
    pipe = load_pipeline(request(sd3_dir / "sd35-all-in-one.safetensors")).pipeline
    file = load_file(str(sd3_dir / "sd35-all-in-one.safetensors"))

    def under(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in file.items() if k.startswith(prefix)}

    expected = {
        "transformer": to_diffusers(under("model.diffusion_model.")),
        "text_encoder": under("text_encoders.clip_l.transformer."),
        "text_encoder_2": under("text_encoders.clip_g.transformer."),
        "text_encoder_3": under("text_encoders.t5xxl.transformer."),
        "vae": convert_ldm_vae_checkpoint(under("first_stage_model."), pipe.vae.config),
    }
    expected["text_encoder_3"]["encoder.embed_tokens.weight"] = expected["text_encoder_3"]["shared.weight"]
    for name, wanted in expected.items():
        loaded = getattr(pipe, name).state_dict()
        if name.startswith("text_encoder") and name != "text_encoder_3" and not next(iter(loaded)).startswith("text_model."):
            wanted = {(k if k == "text_projection.weight" else k.removeprefix("text_model.")): v for k, v in wanted.items()}
        assert loaded.keys() == wanted.keys(), name
        assert all(torch.equal(loaded[k], wanted[k]) for k in loaded), name
    assert pipe.vae.config.scaling_factor == 1.5305 and pipe.scheduler.config.shift == 3.0  # SD3's, not Flux's


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(sd3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jobs]:
    root = tmp_path_factory.mktemp("sd3-jobs")
    models = root / "models"
    shutil.copytree(sd3_dir, models)
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, models)
    await registry.scan()
    text_encoders = TextEncoderRegistry(db, models)
    await text_encoders.scan()
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=20))
    await service.start()
    yield Jobs(registry, service, None, vaes=VaeRegistry(db, models), text_encoders=text_encoders)
    await service.close()
    await db.close()


async def picture(jobs: Jobs, **options) -> tuple[np.ndarray, dict[str, str]]:
    values = {"prompt": "a red circle", "checkpoint": "sd35", "seed": 4, "steps": 3} | options
    [handle] = await jobs.start(await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**values)))
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    image = Image.open(io.BytesIO(done.job.images[0].png))
    return np.asarray(image), parse_generation_parameters(image.info["parameters"])[2]


@pytest.mark.asyncio(loop_scope="module")
async def test_sais_shape_with_its_encoders_apart_makes_the_all_in_one_files_picture(jobs: Jobs) -> None:
    apart, params = await picture(jobs)
    whole, _ = await picture(jobs, checkpoint="sd35-all-in-one")
    assert np.array_equal(apart, whole)  # the same weights in either shape: the same picture
    assert (params["Module 1"], params["Module 2"], params["Module 3"]) == ("clip_l", "clip_g", "t5xxl_fp16")
    negative, _ = await picture(jobs, negative="red")
    assert not np.array_equal(apart, negative)  # real CFG: the negative prompt counts
    medium, _ = await picture(jobs, checkpoint="sd35-medium")
    assert medium.std() > 1 and not np.array_equal(medium, apart)


@pytest.mark.asyncio(loop_scope="module")
async def test_sd3_takes_its_model_cards_defaults_and_refuses_what_it_cannot_do(jobs: Jobs) -> None:
    [large] = (await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a red circle", checkpoint="sd35"))).specs
    assert (large.parameters.steps, large.parameters.cfg, large.parameters.sampler, large.parameters.distilled_cfg) == (28, 3.5, "Euler", 0.0)
    [medium] = (await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="x", checkpoint="sd35-medium"))).specs
    assert (medium.parameters.steps, medium.parameters.cfg) == (40, 4.5)
    refusals = {
        r"LMS has no flow form here\. Choose one of Euler, DPM\+\+ 2M, UniPC": {"sampler": "LMS"},
        r"sd35 is an SD3 checkpoint; a latent upscaler for the hires fix \(choose Lanczos or an upscaler model\) is not supported on SD3 yet": {"hires_scale": 2.0},
        "SD3 needs sizes in multiples of 16, not 72x64": {"size": (72, 64)},
    }
    for message, options in refusals.items():
        with pytest.raises(EaselError, match=message):
            await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a red circle", checkpoint="sd35", **options))
    hires, params = await picture(jobs, hires_scale=2.0, hires_upscaler="Lanczos", steps=2)
    assert hires.shape == (128, 128, 3) and params["Hires upscaler"] == "Lanczos"  # pass two by SD3's img2img
    assert jobs.text_encoders is not None
    await jobs.text_encoders.remove("clip_g")
    try:
        with pytest.raises(EaselError, match=r"^sd35 needs a CLIP-G text encoder \(put clip_g\.safetensors in models/text_encoders\); then rescan$"):
            await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a red circle", checkpoint="sd35"))
    finally:
        await jobs.text_encoders.scan()


async def test_sd3_files_merge_within_their_shape(sd3_dir: Path, tmp_path: Path) -> None:
    from bot.checkpoints.merging import MergeRequest, MergeService

    models = tmp_path / "models"
    models.mkdir()
    for seed in (1, 2):
        make_tiny_sd3(models / f"s{seed}.safetensors", "sd35", seed)
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        registry = CheckpointRegistry(db, models)
        await registry.scan()
        entry = await MergeService(registry).merge(MergeRequest("s1", "weighted_sum", 0.5, secondary="s2", name="mix"))
        assert entry.architecture.startswith("SD3.5") and entry.runnable
        a, b, merged = (load_file(str(models / f"{n}.safetensors")) for n in ("s1", "s2", "mix"))
        for key in a:  # the MMDiT merged; the VAE kept from A
            if key.startswith("model.diffusion_model."):
                assert torch.allclose(merged[key], (a[key] + b[key]) / 2, atol=1e-6), key
            else:
                assert torch.equal(merged[key], a[key]), key
    finally:
        await db.close()
