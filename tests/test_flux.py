"""FLUX.1 (dev and schnell): the bundled T5 tokenizer, the key layout, what a file is and what it
lacks, the component store, every parameter loaded as the file has it, and jobs through the real
worker from an all-in-one file and from a transformer-only file with separate parts."""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from PIL import Image
from safetensors.torch import load_file, save_file

from bot.checkpoints.inspection import inspect_file
from bot.checkpoints.registry import CheckpointRegistry
from bot.components.registry import VaeRegistry
from bot.components.text_encoders import TextEncoderFileError, TextEncoderRegistry, detect_text_encoder
from bot.db import open_database
from bot.generation.jobs import Finished
from bot.generation.service import GenerationService
from bot.images.inputs import InputStore
from bot.jobs import Asker, ImagineOptions, Jobs, Place, same_seed
from bot.rules.limits import Limits
from common.bundled import CONFIG_ROOT
from common.errors import EaselError
from common.protocol import ComponentUse, JobPart, LoadRequest, RunBatch
from common.worker_config import WorkerConfig
from gpu_worker.families.flux_layout import to_diffusers, to_original
from gpu_worker.loader import load_pipeline
from gpu_worker.testing.tiny_flux import make_tiny_component, make_tiny_flux, transformer_state
from tests.a1111_infotext import parse_generation_parameters

HOST, HERE = Asker.host(), Place.command_line()


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Flux files of one seed: all-in-one dev and schnell, transformer-only (also fp8), and the
    separate parts, laid out as a ComfyUI/Forge models folder."""
    root = tmp_path_factory.mktemp("flux") / "models"
    (root / "text_encoders").mkdir(parents=True)
    (root / "VAE").mkdir()
    make_tiny_flux(root / "flux-dev.safetensors")
    make_tiny_flux(root / "flux-schnell.safetensors", schnell=True)
    make_tiny_flux(root / "flux-transformer.safetensors", shape="transformer")
    make_tiny_flux(root / "flux-fp8.safetensors", shape="transformer", fp8=True)
    make_tiny_component("clip-l", root / "text_encoders" / "clip_l.safetensors")
    make_tiny_component("t5xxl", root / "text_encoders" / "t5xxl_fp16.safetensors")
    make_tiny_component("flux-vae", root / "VAE" / "ae.safetensors")
    return root


def parts(root: Path) -> tuple[ComponentUse, ...]:
    return (
        ComponentUse("clip_l", "clip_l.safetensors", str(root / "text_encoders" / "clip_l.safetensors"), "c" * 64),
        ComponentUse("t5xxl", "t5xxl_fp16.safetensors", str(root / "text_encoders" / "t5xxl_fp16.safetensors"), "t" * 64),
        ComponentUse("vae", "ae.safetensors", str(root / "VAE" / "ae.safetensors"), "a" * 64),
    )


def request(path: Path, components: tuple[ComponentUse, ...] = ()) -> LoadRequest:
    ins = inspect_file(path)
    return LoadRequest(str(path), path.stem, "flux", ins.architecture.label, "safetensors", ins.pipeline_config, "flow", path.stem, components=components)


def test_the_bundled_t5_tokenizer_is_t5s_own() -> None:
    from transformers import T5TokenizerFast

    folder = CONFIG_ROOT / "_tokenizers" / "t5"
    digest = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    assert digest == "fe2ebbbbde2985be723e0ce18217853e4020c5e9d35bd07be2c27ab9d3ead57a"  # docs in SOURCE.md
    tokenizer = T5TokenizerFast.from_pretrained(str(CONFIG_ROOT / "flux" / "tokenizer_2"))
    assert tokenizer("a photo of a cat").input_ids == [3, 9, 1202, 13, 3, 9, 1712, 1]  # google/t5-v1_1-xxl's ids
    assert len(tokenizer) == 32100 and tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1


def test_the_original_layout_round_trips_and_fuses_as_bfl_does() -> None:
    original = transformer_state(seed=3)
    assert "double_blocks.0.img_attn.qkv.weight" in original and "single_blocks.0.linear1.weight" in original
    diffusers = to_diffusers(original)
    q, k, v = (diffusers[f"transformer_blocks.0.attn.to_{p}.weight"] for p in "qkv")
    assert torch.equal(original["double_blocks.0.img_attn.qkv.weight"], torch.cat([q, k, v]))
    # the final norm's halves are (shift, scale) in BFL's layout and (scale, shift) in diffusers'
    shift, scale = original["final_layer.adaLN_modulation.1.weight"].chunk(2)
    assert torch.equal(diffusers["norm_out.linear.weight"], torch.cat([scale, shift]))
    back = to_original(diffusers)
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)
    with pytest.raises(ValueError, match=r"unknown Flux tensor 'double_blocks\.0\.nonsense\.weight'"):
        to_diffusers(original | {"double_blocks.0.nonsense.weight": torch.zeros(1)})


def test_inspect_names_each_shape_and_what_it_lacks(flux_dir: Path) -> None:
    dev = inspect_file(flux_dir / "flux-dev.safetensors")
    assert (dev.architecture.label, dev.architecture.variant, dev.pipeline_config) == ("FLUX.1 dev", "dev", "tiny-flux")
    assert dev.architecture.runnable and dev.architecture.needs == ()
    assert set(dev.components) == {"transformer", "clip_l", "t5xxl", "vae"}
    schnell = inspect_file(flux_dir / "flux-schnell.safetensors").architecture
    assert (schnell.label, schnell.variant) == ("FLUX.1 schnell", "schnell")
    alone = inspect_file(flux_dir / "flux-fp8.safetensors")
    assert alone.architecture.label == "FLUX.1 dev (transformer only)" and alone.dtype == "F8_E4M3"
    assert alone.architecture.needs == (("clip_l", 32), ("t5xxl", 32), ("vae", 16))
    assert alone.architecture.decided_by == "double_blocks.0.img_attn.norm.key_norm.scale"
    # a Flux-shaped transformer without CLIP input (Chroma and the like) is named and refused
    chroma = {k: v for k, v in load_file(str(flux_dir / "flux-transformer.safetensors")).items() if not k.startswith("vector_in.")}
    save_file(chroma, str(flux_dir.parent / "chroma.safetensors"))
    refused = inspect_file(flux_dir.parent / "chroma.safetensors").architecture
    assert not refused.runnable and "without CLIP input" in refused.reason


def test_what_a_text_encoder_file_is(flux_dir: Path) -> None:
    def shapes(path: Path) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in load_file(str(path)).items()}

    t5 = detect_text_encoder(shapes(flux_dir / "text_encoders" / "t5xxl_fp16.safetensors"))
    clip = detect_text_encoder(shapes(flux_dir / "text_encoders" / "clip_l.safetensors"))
    assert (t5.role, t5.width, t5.prefix) == ("t5xxl", 32, "") and (clip.role, clip.width) == ("clip-l", 32)
    real = {"text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096)}
    assert detect_text_encoder(real).label == "T5-XXL text encoder"
    assert detect_text_encoder({"text_model.embeddings.token_embedding.weight": (49408, 1280)}).label == "CLIP-G text encoder"
    for bad, message in (
        (shapes(flux_dir / "flux-dev.safetensors"), "a whole checkpoint"),
        ({"foo": (1, 1)}, "not a CLIP, T5, Qwen3 or Qwen2.5-VL text encoder"),
    ):
        with pytest.raises(TextEncoderFileError, match=message):
            detect_text_encoder(bad)


def test_every_parameter_of_the_loaded_model_is_the_files(flux_dir: Path) -> None:
    pipe = load_pipeline(request(flux_dir / "flux-dev.safetensors")).pipeline
    file = load_file(str(flux_dir / "flux-dev.safetensors"))

    def under(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in file.items() if k.startswith(prefix)}

    expected = {
        "transformer": to_diffusers(under("model.diffusion_model.")),
        "text_encoder": under("text_encoders.clip_l.transformer."),
        "text_encoder_2": under("text_encoders.t5xxl.transformer."),
        "vae": convert_ldm_vae_checkpoint(under("vae."), pipe.vae.config),
    }
    expected["text_encoder_2"]["encoder.embed_tokens.weight"] = expected["text_encoder_2"]["shared.weight"]
    del expected["text_encoder"]["text_projection.weight"]  # in the file (as ComfyUI's clip_l has it); Flux does not use it
    for name, wanted in expected.items():
        loaded = getattr(pipe, name).state_dict()
        if name == "text_encoder" and not next(iter(loaded)).startswith("text_model."):
            wanted = {k.removeprefix("text_model."): v for k, v in wanted.items()}
        assert loaded.keys() == wanted.keys(), name
        assert all(torch.equal(loaded[k], wanted[k]) for k in loaded), name
    assert pipe.transformer.config.guidance_embeds and pipe.scheduler.config.use_dynamic_shifting
    fp8 = load_pipeline(request(flux_dir / "flux-fp8.safetensors", parts(flux_dir))).pipeline
    stored = load_file(str(flux_dir / "flux-fp8.safetensors"))
    upcast = to_diffusers({k: v.float() for k, v in stored.items()})
    assert all(torch.equal(fp8.transformer.state_dict()[k], upcast[k]) for k in upcast)  # fp8 read, upcast exactly
    schnell = load_pipeline(request(flux_dir / "flux-schnell.safetensors")).pipeline
    assert not schnell.transformer.config.guidance_embeds and not schnell.scheduler.config.use_dynamic_shifting


def test_a_part_that_does_not_fit_is_refused_by_name(flux_dir: Path, tiny_dir: Path) -> None:
    from gpu_worker.loaded import CheckpointLoadError

    wrong = (*parts(flux_dir)[:2], ComponentUse("vae", "sd1.safetensors", str(tiny_dir / "tiny-sd1.safetensors"), "x" * 64))
    with pytest.raises(CheckpointLoadError, match=r"sd1\.safetensors does not fit AutoencoderKL"):
        load_pipeline(request(flux_dir / "flux-transformer.safetensors", wrong))
    with pytest.raises(CheckpointLoadError, match="has no T5-XXL text encoder and none was given"):
        load_pipeline(request(flux_dir / "flux-transformer.safetensors", parts(flux_dir)[:1]))


def test_the_runner_makes_the_same_picture_from_both_shapes(flux_dir: Path) -> None:
    from common.protocol import BatchProgress, JobDone, JobPreview
    from gpu_worker.cache import PipelineCache
    from gpu_worker.runner import BatchRunner

    events: list[object] = []
    cache = PipelineCache("cpu", 1 << 30, 0, lambda r: load_pipeline(r, "cpu"))
    runner = BatchRunner("cpu", cache, events.append, lambda job_id: False)

    def run(load: LoadRequest, **values) -> list[np.ndarray]:
        events.clear()
        settings = {"cfg": 1.0, "sampler": "Euler"} | values
        batch = RunBatch.of("b", load, (JobPart("j", "a red circle", "blurry", (7, 8)),), 64, 64, 4, schedule="Automatic", **settings)
        runner.run(batch)
        [done] = [e for e in events if isinstance(e, JobDone)]
        return [np.asarray(Image.open(io.BytesIO(r.png))) for r in done.images]

    whole = run(request(flux_dir / "flux-dev.safetensors"), preview_every=2)
    assert [e.step for e in events if isinstance(e, BatchProgress)] == [1, 2, 3, 4]
    assert len([e for e in events if isinstance(e, JobPreview)]) == 1  # after step 2 of 4 (none after the last)
    split = run(request(flux_dir / "flux-transformer.safetensors", parts(flux_dir)))
    assert all(np.array_equal(a, b) for a, b in zip(whole, split, strict=True))  # bit for bit
    assert not np.array_equal(whole[0], whole[1])  # one seed each
    buffer = io.BytesIO()
    Image.fromarray(whole[0]).save(buffer, format="PNG")
    redrawn = run(request(flux_dir / "flux-dev.safetensors"), init_png=buffer.getvalue(), strength=0.5)
    assert redrawn[0].shape == whole[0].shape and not np.array_equal(redrawn[0], whole[0])  # img2img
    assert [e.step for e in events if isinstance(e, BatchProgress)][-1] == 2  # 4 steps x 0.5
    hires = run(request(flux_dir / "flux-dev.safetensors"), hires_scale=2.0, hires_upscaler="Lanczos", hires_denoise=0.5, preview_every=1)
    assert hires[0].shape == (128, 128, 3)  # pass two at twice the size
    assert [e.step for e in events if isinstance(e, BatchProgress)][-1] == 6  # 4 + 4 x 0.5, one count
    sizes = {Image.open(io.BytesIO(e.png)).size for e in events if isinstance(e, JobPreview)}
    assert sizes == {(64, 64), (128, 128)}  # each pass's previews at its own size
    guided = run(request(flux_dir / "flux-dev.safetensors"), distilled_cfg=1.0)
    assert not np.array_equal(whole[0], guided[0])  # the guidance input reaches the transformer
    true_cfg = run(request(flux_dir / "flux-dev.safetensors"), cfg=4.0)
    assert not np.array_equal(whole[0], true_cfg[0])  # CFG above 1 runs the negative prompt too
    events.clear()
    runner.run(RunBatch.of("b", request(flux_dir / "flux-dev.safetensors"), (JobPart("j", "a (red:1.6) circle <lora:x:1>", "", (7,)),), 64, 64, 4, 1.0, "Euler", "Automatic"))
    [emphasised] = [np.asarray(Image.open(io.BytesIO(e.images[0].png))) for e in events if isinstance(e, JobDone)]
    assert not np.array_equal(emphasised, whole[0])  # (red:1.6) weighs on T5's tokens
    for sampler in ("DPM++ 2M", "UniPC"):
        other = run(request(flux_dir / "flux-dev.safetensors"), sampler=sampler)
        assert other[0].std() > 1 and not np.array_equal(other[0], whole[0])
        fixed_shift = run(request(flux_dir / "flux-schnell.safetensors"), sampler=sampler, distilled_cfg=0.0)
        assert fixed_shift[0].std() > 1


def test_the_flow_solvers_follow_the_models_shift() -> None:
    """DPM++ 2M and UniPC in flow form step through the sigmas flow-matching Euler does: shifted by
    image size for dev (exp(mu)), unshifted for schnell. (Their grid starts one training step below
    sigma 1 and ends a little higher: 0.2% at most, hence the tolerance.)"""
    from gpu_worker.families.flux import flow_scheduler
    from gpu_worker.samplers import make_scheduler

    for schnell in (False, True):
        base = dict(flow_scheduler(CONFIG_ROOT / "tiny-flux", schnell).config)
        euler = make_scheduler(base, "Euler", "Automatic")
        euler.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8), mu=0.8)  # FluxPipeline's sigmas and a mu
        for sampler in ("DPM++ 2M", "UniPC"):
            solver = make_scheduler(base, sampler, "Automatic")
            # the mu FluxPipeline would pass it: from its own base/max shift when those are fixed
            solver.set_timesteps(8, mu=solver.config.base_shift if schnell else 0.8)
            assert np.allclose(solver.sigmas[:8].numpy(), euler.sigmas[:8].numpy(), atol=2e-3), (schnell, sampler)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(flux_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jobs]:
    root = tmp_path_factory.mktemp("flux-jobs")
    models = root / "models"
    shutil.copytree(flux_dir, models, ignore=shutil.ignore_patterns("text_encoders", "VAE"))
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, models)
    await registry.scan()
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=20))
    await service.start()
    inputs = InputStore(root / "inputs")  # Vary keeps the picture it starts from
    yield Jobs(registry, service, None, inputs=inputs, vaes=VaeRegistry(db, models), text_encoders=TextEncoderRegistry(db, models))
    await service.close()
    await db.close()


async def picture(jobs: Jobs, plan=None, **options) -> tuple[np.ndarray, dict[str, str], str]:
    values = {"prompt": "a red circle", "checkpoint": "flux-dev", "seed": 4, "steps": 3} | options
    plan = plan or await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**values))
    [handle] = await jobs.start(plan)
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    image = Image.open(io.BytesIO(done.job.images[0].png))
    return np.asarray(image), parse_generation_parameters(image.info["parameters"])[2], done.job.id


@pytest.mark.asyncio(loop_scope="module")
async def test_a_transformer_only_file_says_what_it_lacks_before_anything_is_queued(jobs: Jobs, flux_dir: Path) -> None:
    assert jobs.text_encoders is not None and jobs.vaes is not None
    with pytest.raises(EaselError) as refused:
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a red circle", checkpoint="flux-transformer"))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("flux-transformer needs a CLIP-L text encoder")
    assert "put t5xxl_fp16.safetensors in models/text_encoders" in message and "put ae.safetensors in models/VAE" in message
    assert jobs.generation.status().queued == 0  # refused before the queue
    folder = jobs.text_encoders.default_folder()
    folder.mkdir(parents=True)
    for name in ("clip_l", "t5xxl_fp16"):
        shutil.copy(flux_dir / "text_encoders" / f"{name}.safetensors", folder / f"{name}.safetensors")
    assert {e.name for e in (await jobs.text_encoders.scan()).added} == {"clip_l", "t5xxl_fp16"}
    with pytest.raises(EaselError, match=r"^flux-transformer needs a 16-channel VAE \(put ae.safetensors in models/VAE\)"):
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a red circle", checkpoint="flux-transformer"))
    jobs.vaes.default_folder().mkdir(parents=True)
    shutil.copy(flux_dir / "VAE" / "ae.safetensors", jobs.vaes.default_folder() / "ae.safetensors")
    await jobs.vaes.scan()
    split, params, job_id = await picture(jobs, checkpoint="flux-transformer")
    whole, whole_params, _ = await picture(jobs)
    assert np.array_equal(split, whole)  # the same weights in either shape: the same picture
    assert (params["Module 1"], params["Module 2"], params["Module 3"]) == ("ae", "clip_l", "t5xxl_fp16")  # as Forge
    assert (params["Sampler"], params["CFG scale"], params["Distilled CFG Scale"]) == ("Euler", "1.0", "3.5")
    assert "Module 1" not in whole_params
    rerun, _, _ = await picture(jobs, plan=await jobs.plan_rerun(HOST, HERE, job_id, seed=same_seed))
    assert np.array_equal(rerun, split)


@pytest.mark.asyncio(loop_scope="module")
async def test_flux_takes_its_own_defaults_and_refuses_what_it_cannot_do(jobs: Jobs) -> None:
    plan = await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a red circle", checkpoint="flux-schnell"))
    [spec] = plan.specs
    assert (spec.parameters.steps, spec.parameters.cfg, spec.parameters.sampler, spec.parameters.distilled_cfg) == (4, 1.0, "Euler", 0.0)
    [dev] = (await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a red circle", checkpoint="flux-dev"))).specs
    assert (dev.parameters.steps, dev.parameters.cfg, dev.parameters.distilled_cfg) == (20, 1.0, 3.5)
    _, params, _ = await picture(jobs, checkpoint="flux-schnell")
    assert "Distilled CFG Scale" not in params and params["Steps"] == "3"
    refusals = {
        "DPM++ SDE has no flow form here. Choose one of Euler, DPM++ 2M, UniPC": {"sampler": "DPM++ SDE"},
        r"a latent upscaler for the hires fix \(choose Lanczos or an upscaler model\) is not supported on Flux yet": {"hires_scale": 2.0},
        "clip skip is not supported on Flux yet": {"clip_skip": 2},
        "Flux needs sizes in multiples of 16, not 72x64": {"size": (72, 64)},
        r"prompt editing and alternation \(\[a:b:0\.5\], \[a\|b\]\) is not supported on Flux yet": {"prompt": "a [red:blue:0.5] circle"},
    }
    # Vary and Upscale on a Flux picture: img2img, and the hires fix with a picture upscaler
    [handle] = await jobs.start(await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a red circle", checkpoint="flux-dev", steps=2)))
    made = [event async for event in handle.events()][-1]
    assert isinstance(made, Finished)
    for how, size in (({"init_image": made.job.images[0].png, "strength": 0.5}, (64, 64)), ({"hires_scale": 2.0}, (128, 128))):
        [handle] = await jobs.start(await jobs.plan_rerun(HOST, HERE, made.job.id, **how))
        done = [event async for event in handle.events()][-1]
        assert isinstance(done, Finished), done
        assert Image.open(io.BytesIO(done.job.images[0].png)).size == size
    params = parse_generation_parameters(Image.open(io.BytesIO(done.job.images[0].png)).info["parameters"])[2]
    assert (params["Hires upscale"], params["Hires upscaler"]) == ("2", "Lanczos")
    for message, options in refusals.items():
        values = {"prompt": "a red circle", "checkpoint": "flux-dev"} | options
        pattern = message if message.startswith(("prompt editing", "a latent")) else message.replace("(", r"\(").replace("+", r"\+")
        with pytest.raises(EaselError, match=pattern):
            await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**values))


async def test_flux_files_merge_within_their_shape(flux_dir: Path, tmp_path: Path, tiny_dir: Path) -> None:
    from bot.checkpoints.merging import MergeRequest, MergeService

    models = tmp_path / "models"
    models.mkdir()
    for seed in (1, 2):
        make_tiny_flux(models / f"t{seed}.safetensors", seed, shape="transformer", fp8=seed == 2)
        make_tiny_flux(models / f"a{seed}.safetensors", seed)
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", models / "sd1.safetensors")
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        registry = CheckpointRegistry(db, models)
        await registry.scan()
        service = MergeService(registry)
        entry = await service.merge(MergeRequest("t1", "weighted_sum", 0.25, secondary="t2", name="tmix"))
        assert entry.architecture == "FLUX.1 dev (transformer only)" and entry.runnable
        a, b, merged = (load_file(str(models / f"{n}.safetensors")) for n in ("t1", "t2", "tmix"))
        for key in a:  # every tensor of a transformer-only file is merged; B's fp8 read as its values
            expected = 0.75 * a[key].double() + 0.25 * b[key].double()
            assert torch.allclose(merged[key].double(), expected, atol=1e-6), key
        await service.merge(MergeRequest("a1", "weighted_sum", 0.5, secondary="a2", name="amix"))
        a, b, merged = (load_file(str(models / f"{n}.safetensors")) for n in ("a1", "a2", "amix"))
        for key in a:  # all-in-one: the transformers merged, the text encoders and VAE kept from A
            if key.startswith("model.diffusion_model."):
                assert torch.allclose(merged[key], (a[key] + b[key]) / 2, atol=1e-6), key
            else:
                assert torch.equal(merged[key], a[key]), key
        refusals = {
            "a transformer-only file and a1.safetensors a all-in-one one": ("t1", "a1"),
            "different architectures cannot be merged": ("t1", "sd1"),
        }
        for message, (first, second) in refusals.items():
            with pytest.raises(EaselError, match=message):
                await service.merge(MergeRequest(first, "weighted_sum", 0.5, secondary=second, name="no"))
    finally:
        await db.close()


async def test_every_hostile_file_in_the_text_encoder_folder_is_refused_by_name(tmp_path: Path) -> None:
    from tests.hostile_files import scan_hostile_folder

    made, report = await scan_hostile_folder(tmp_path, "text_encoders", TextEncoderRegistry)
    refused = dict(report.errors)
    assert not report.added and set(refused) == {name for name in made if name.endswith(".safetensors")}
    assert all("\n" not in reason for reason in refused.values())


def test_the_bundled_real_configs_are_flux1_devs_shapes() -> None:
    """The real-size path on the meta device (no memory): BFL's key layout of a FLUX.1-dev-sized
    transformer maps back to the bundled config, counts FLUX.1 dev's 11.9 B parameters, picks the
    `flux` folder, and its parts are as wide as the transformer takes."""
    import json

    from diffusers import FluxTransformer2DModel
    from transformers import T5Config

    from bot.checkpoints.architecture import detect_architecture
    from bot.checkpoints.pipeline_config import choose_pipeline_config
    from common.tensors import TensorInfo
    from gpu_worker.families.flux_layout import transformer_config

    folder = CONFIG_ROOT / "flux"
    bundled = json.loads((folder / "transformer" / "config.json").read_text())
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(bundled)
    original = to_original(model.state_dict())
    assert 11.8e9 < sum(t.numel() for t in original.values()) < 12.0e9
    shapes = {k: tuple(v.shape) for k, v in original.items()}
    config = transformer_config(shapes, bundled)
    assert {k: config[k] for k in bundled} == bundled
    tensors = {f"model.diffusion_model.{k}": TensorInfo(f"model.diffusion_model.{k}", "BF16", s) for k, s in shapes.items()}
    arch = detect_architecture(tensors)
    assert arch.label == "FLUX.1 dev" and choose_pipeline_config(arch, tensors) == ("flux", "")
    assert dict(arch.needs) == {"clip_l": 768, "t5xxl": 4096, "vae": 16}
    t5 = T5Config(**json.loads((folder / "text_encoder_2" / "config.json").read_text()))
    clip = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert (t5.d_model, clip["hidden_size"]) == (bundled["joint_attention_dim"], bundled["pooled_projection_dim"])


def test_parts_shared_by_two_checkpoints_are_loaded_and_counted_once(flux_dir: Path, tmp_path: Path) -> None:
    from gpu_worker.cache import PipelineCache, module_bytes, pipeline_bytes

    other = make_tiny_flux(tmp_path / "other.safetensors", seed=1, shape="transformer")
    cache = PipelineCache("cpu", 1 << 30, 0, lambda r: load_pipeline(r, "cpu"))
    first, _ = cache.get(request(flux_dir / "flux-transformer.safetensors", parts(flux_dir)))
    second, _ = cache.get(request(other, parts(flux_dir)))
    one, two = first.pipeline, second.pipeline
    assert two.text_encoder_2 is one.text_encoder_2 and two.text_encoder is one.text_encoder and two.vae is one.vae
    assert two.transformer is not one.transformer
    own = module_bytes(two)[id(two.transformer)]
    assert cache.device_bytes() == pipeline_bytes(one) + own  # the shared parts once


def test_loading_and_running_flux_and_sd3_reach_no_network(flux_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the hub's offline switches off and every socket connection refused and recorded, both
    families load (configs, tokenizers) and draw: everything comes from the bundled folders."""
    import socket

    import huggingface_hub.constants

    from gpu_worker.model_parts import clip_tokenizer, t5_tokenizer
    from gpu_worker.testing.tiny_sd3 import make_tiny_sd3

    attempts: list[object] = []

    def refuse(self: socket.socket, address: object, *args: object) -> None:
        attempts.append(address)
        raise OSError("this test has no network")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    clip_tokenizer.cache_clear()  # built again, under the guard
    t5_tokenizer.cache_clear()
    sd3 = request(make_tiny_sd3(tmp_path / "sd3.safetensors", "sd35-all-in-one"))
    for load in (request(flux_dir / "flux-dev.safetensors"), replace(sd3, family="sd3")):
        pipe = load_pipeline(load).pipeline
        image = pipe("a red circle", width=64, height=64, num_inference_steps=2, output_type="np").images[0]
        assert image.std() > 0.01
    assert attempts == []


def test_prompts_are_read_as_a1111_reads_them_and_emphasis_weighs_t5(flux_dir: Path) -> None:
    from gpu_worker.families.sd3 import _sd3_weighted
    from gpu_worker.flow_prompts import encode_weighted, plain, weighted
    from gpu_worker.testing.tiny_sd3 import make_tiny_sd3

    assert plain("a (red:1.5) circle <lora:ink:0.8>, BREAK [blue] sky") == "a red circle , blue sky"
    assert weighted("a (red:1.5) circle") and not weighted("a red circle <lora:ink:1>")
    flux = load_pipeline(request(flux_dir / "flux-dev.safetensors")).pipeline
    ours = encode_weighted(flux.text_encoder_2, flux.tokenizer_2, ["a red circle"], 512, t5=True)
    assert torch.equal(ours, flux._get_t5_prompt_embeds("a red circle", max_sequence_length=512))  # the same tokens
    sd3 = load_pipeline(replace(request(make_tiny_sd3(flux_dir.parent / "sd3.safetensors", "sd35-all-in-one")), family="sd3")).pipeline
    embeds = sd3.encode_prompt("a red circle", "a red circle", "a red circle", do_classifier_free_guidance=False, max_sequence_length=256)[0]
    assert torch.allclose(_sd3_weighted(sd3, ["a red circle"], 256, embeds), embeds, atol=1e-6)  # CLIP-L, CLIP-G, T5 alike


@pytest.mark.asyncio(loop_scope="module")
async def test_a_flux_lora_applies_at_its_strength_and_leaves_no_trace(jobs: Jobs, flux_dir: Path) -> None:
    """A LoRA in ai-toolkit's layout (diffusers' own) on the Flux transformer, picked by its prompt
    tag: it changes the picture, more at a higher strength, and the next job without it is
    bit-identical to one before it."""
    from bot.networks.registry import LoraRegistry
    from gpu_worker.testing.tiny_flux import make_tiny_flux_lora

    folder = jobs.registry.models_root / "Lora"
    folder.mkdir(exist_ok=True)
    make_tiny_flux_lora(folder / "glow.safetensors", seed=3)
    jobs.loras = LoraRegistry(jobs.registry.db, jobs.registry.models_root)
    [entry] = (await jobs.loras.scan()).added
    assert (entry.base, entry.loadable) == ("flux", True)
    before, _, _ = await picture(jobs)
    strong, params, _ = await picture(jobs, prompt="a red circle <lora:glow:1>")
    weak, _, _ = await picture(jobs, prompt="a red circle <lora:glow:0.3>")
    after, _, _ = await picture(jobs)
    assert params["Lora hashes"].startswith("glow: ")
    assert np.array_equal(before, after)  # the adapter is off for jobs without it
    assert np.abs(strong.astype(float) - before).mean() > np.abs(weak.astype(float) - before).mean() > 0
    with pytest.raises(EaselError, match="is for"):  # an SD1 LoRA is not offered to a Flux checkpoint
        from gpu_worker.testing.tiny_networks import make_tiny_lora

        make_tiny_lora("sd1", folder / "sd1-ink.safetensors", seed=1)
        await jobs.loras.scan()
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="x <lora:sd1-ink:1>", checkpoint="flux-dev"))


def test_an_offloaded_flow_model_is_previewed_without_its_vae(flux_dir: Path) -> None:
    """Offloaded, waking the VAE for a preview would drag the transformer off the device every few
    steps: the preview comes from the latents by ComfyUI's linear map; the VAE decodes the result only."""
    from common.protocol import JobDone, JobPreview
    from gpu_worker.cache import PipelineCache
    from gpu_worker.placement import OFFLOAD, WHOLE
    from gpu_worker.runner import BatchRunner

    events: list[object] = []
    cache = PipelineCache("cpu", 1 << 30, 0, lambda r: load_pipeline(r, "cpu"))
    runner = BatchRunner("cpu", cache, events.append, lambda job_id: False)
    load = request(flux_dir / "flux-dev.safetensors")
    loaded, _ = cache.get(load)
    loaded.placement = OFFLOAD  # as on a card smaller than the model (the cache sets it when placing)
    decodes: list[tuple[int, ...]] = []
    real_decode = loaded.pipeline.vae.decode

    def decode(latents, *args, **kwargs):
        decodes.append(tuple(latents.shape))
        return real_decode(latents, *args, **kwargs)

    loaded.pipeline.vae.decode = decode
    try:
        batch = RunBatch.of("b", load, (JobPart("j", "a red circle", "", (7,)),), 64, 64, 4, cfg=1.0, preview_every=1)
        runner.run(batch)
    finally:
        del loaded.pipeline.vae.decode
        loaded.placement = WHOLE
    previews = [e for e in events if isinstance(e, JobPreview)]
    assert previews and len(decodes) == 1  # the finished picture's decode only
    assert Image.open(io.BytesIO(previews[0].png)).size == (8, 8)  # the latent's size: 64 px / 8
    assert [e for e in events if isinstance(e, JobDone)]


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # the scales-dropped control overflows
def test_a_scaled_fp8_file_is_read_as_its_values_times_their_scales(flux_dir: Path, tmp_path: Path) -> None:
    """ComfyUI's `…_fp8_scaled` files (FLUX.1 Kontext's, T5-XXL's): each matrix is fp8 times its
    `scale_weight`; read without the scales the weights would be off by those factors."""
    from safetensors import safe_open

    from gpu_worker.testing.quantise import quantise_file

    scaled = tmp_path / "flux-fp8-scaled.safetensors"
    shutil.copy(flux_dir / "flux-transformer.safetensors", scaled)
    quantise_file(scaled, "fp8-scaled")
    ins = inspect_file(scaled)
    assert ins.quantisation.startswith("scaled fp8") and ins.architecture.runnable and ins.dtype == "F8_E4M3"
    with safe_open(str(scaled), framework="pt") as file:
        values = file.get_tensor("double_blocks.0.img_attn.qkv.weight").to(torch.float32)
        scale = file.get_tensor("double_blocks.0.img_attn.qkv.scale_weight")
    assert scale.ndim == 0 and not torch.isclose(scale, torch.tensor(1.0))
    plain = load_pipeline(request(flux_dir / "flux-transformer.safetensors", parts(flux_dir))).pipeline.transformer
    read = load_pipeline(request(scaled, parts(flux_dir))).pipeline.transformer
    q = read.transformer_blocks[0].attn.to_q.weight
    assert torch.equal(q, (values * scale)[: q.shape[0]])  # exactly the values times the scale
    for (name, ours), theirs in zip(read.state_dict().items(), plain.state_dict().values(), strict=True):
        # e4m3fn keeps 3 bits of mantissa: within 1/16 of the largest magnitude of each matrix
        assert (ours - theirs).abs().max() <= theirs.abs().max() / 16 + 1e-6, name
    # The pictures: the scaled file draws the plain file's picture within fp8's rounding; the same file
    # with its scales dropped (its values read as the weights) does not.
    unscaled = tmp_path / "flux-fp8-unscaled.safetensors"
    save_file({k: v for k, v in load_file(str(scaled)).items() if not k.endswith("scale_weight") and k != "scaled_fp8"}, str(unscaled))
    from common.protocol import JobDone
    from gpu_worker.cache import PipelineCache
    from gpu_worker.runner import BatchRunner

    events: list[object] = []
    runner = BatchRunner("cpu", PipelineCache("cpu", 1 << 30, 0, lambda r: load_pipeline(r, "cpu")), events.append, lambda job_id: False)

    def drawn(path: Path) -> np.ndarray:
        events.clear()
        runner.run(RunBatch.of("b", request(path, parts(flux_dir)), (JobPart("j", "a red circle", "", (7,)),), 64, 64, 3, 1.0, "Euler", "Automatic"))
        [done] = [e for e in events if isinstance(e, JobDone)]
        return np.asarray(Image.open(io.BytesIO(done.images[0].png)), dtype=float)

    reference = drawn(flux_dir / "flux-transformer.safetensors")
    near, far = np.abs(drawn(scaled) - reference).mean(), np.abs(drawn(unscaled) - reference).mean()
    assert near < 3 and far > 3 * max(near, 1), (near, far)  # mean levels of 255
    nvfp4 = tmp_path / "flux-nvfp4.safetensors"
    save_file(load_file(str(flux_dir / "flux-transformer.safetensors")) | {"img_in.weight_scale_2": torch.ones(())}, str(nvfp4))
    assert "NVFP4" in inspect_file(nvfp4).architecture.reason and not inspect_file(nvfp4).architecture.runnable
