"""FLUX.2 [klein]: BFL's transformer file told by its tensors (Base by its name, dev refused by name),
its parts from the component store (the Qwen3-4B file Z-Image uses, FLUX.2's 32-channel VAE in BFL's
layout), every parameter loaded as the files have it, pictures and previews through the real runner,
its edits (input pictures beside the prompt), and the command line's make, inspect, refusal, draw and
edit through the worker process."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bot.checkpoints.inspection import inspect_file
from bot.components.detection import detect_vae
from common.protocol import ComponentUse, JobDone, JobPart, JobPreview, LoadRequest, RunBatch
from gpu_worker.testing.tiny_flux2 import make_tiny_flux2, make_tiny_flux2_parts
from tests.a1111_infotext import parse_generation_parameters
from tests.helpers import in_process_runner, png


@pytest.fixture(scope="module")
def klein_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("klein") / "models"
    make_tiny_flux2(root / "flux-2-klein-4b.safetensors")
    make_tiny_flux2(root / "flux-2-klein-base-4b.safetensors", base=True)
    make_tiny_flux2(root / "klein-aio.safetensors", shape="all-in-one")
    make_tiny_flux2(root / "flux-2-klein-seed1.safetensors", seed=1)
    make_tiny_flux2_parts(root)
    return root


def request(root: Path, name: str, parts: bool = True) -> LoadRequest:
    path = root / name
    ins = inspect_file(path)
    uses = (
        ComponentUse("qwen3", "qwen_3_4b.safetensors", str(root / "text_encoders" / "qwen_3_4b.safetensors"), "q" * 64),
        ComponentUse("vae", "flux2-vae.safetensors", str(root / "VAE" / "flux2-vae.safetensors"), "v" * 64),
    )
    return LoadRequest(
        str(path), path.stem, "flux2", ins.architecture.label, "safetensors", ins.pipeline_config, "flow", path.stem,
        components=uses if parts else (), variant=ins.architecture.variant,
    )  # fmt: skip


@pytest.fixture(scope="module")
def runner_and_events():
    runner, events, cache = in_process_runner()
    return runner, events, cache


def drawn(runner, events: list, load: LoadRequest, seeds: tuple[int, ...] = (7,), **values) -> list[np.ndarray]:
    events.clear()
    prompt, negative = values.pop("prompt", "a red circle"), values.pop("negative", "")
    settings = {"cfg": 1.0, "sampler": "Euler"} | values
    runner.run(RunBatch.of("b", load, (JobPart("j", prompt, negative, seeds),), 64, 64, 3, schedule="Automatic", **settings))
    [done] = [e for e in events if isinstance(e, JobDone)]
    return [np.asarray(Image.open(io.BytesIO(r.png)), dtype=float) for r in done.images]




def test_inspect_names_each_release_and_what_it_needs(klein_dir: Path) -> None:
    klein = inspect_file(klein_dir / "flux-2-klein-4b.safetensors").architecture
    assert (klein.family, klein.variant, klein.label, klein.runnable) == ("flux2", "klein", "FLUX.2 [klein] (transformer only)", True)
    assert klein.needs == (("qwen3", 32), ("vae", 32))
    base = inspect_file(klein_dir / "flux-2-klein-base-4b.safetensors").architecture
    assert (base.variant, base.label) == ("base", "FLUX.2 [klein] Base (transformer only)")
    aio = inspect_file(klein_dir / "klein-aio.safetensors")
    assert aio.architecture.needs == () and set(aio.components) == {"transformer", "qwen3", "vae"}
    # the VAE store knows FLUX.2's VAE by its 32 latent channels (offered to FLUX.2 only)
    vae = detect_vae({k: tuple(v.shape) for k, v in load_file(klein_dir / "VAE" / "flux2-vae.safetensors").items()})
    assert (vae.latent_channels, vae.label) == (32, "VAE for FLUX.2 (32-channel latents)")


def test_klein_9b_is_named_and_its_qwen3_8b_asked_for_by_name() -> None:
    """9B's transformer reads three 4096-wide Qwen3-8B layers (12288): its label and the file to install say so."""
    from bot.checkpoints.architecture import detect_architecture
    from bot.components.parts import PartsFound
    from common.tensors import TensorInfo

    shapes = {"double_stream_modulation_img.lin.weight": (24576, 4096), "txt_in.weight": (4096, 12288), "img_in.weight": (4096, 128)}
    nine = detect_architecture({k: TensorInfo(k, "BF16", v) for k, v in shapes.items()}, {}, {}, "flux-2-klein-9b.safetensors")
    assert (nine.label, nine.needs) == ("FLUX.2 [klein] 9B (transformer only)", (("qwen3", 4096), ("vae", 32)))
    advice = str(PartsFound((), ("qwen3",), "flux2", nine.needs).refusal("klein-9b"))
    assert advice == "klein-9b needs a Qwen3 text encoder (put qwen_3_8b.safetensors in models/text_encoders); then rescan"


def test_flux2_dev_is_named_and_refused(tmp_path: Path) -> None:
    """FLUX.2 dev takes a guidance input and reads Mistral Small 3.1: named, refused in one line."""
    from safetensors.torch import save_file

    state = load_file(str(make_tiny_flux2(tmp_path / "k.safetensors")))
    save_file(state | {"guidance_in.in_layer.weight": torch.zeros(32, 32), "guidance_in.out_layer.weight": torch.zeros(32, 32)}, str(tmp_path / "flux2-dev.safetensors"))
    dev = inspect_file(tmp_path / "flux2-dev.safetensors").architecture
    assert (dev.label, dev.runnable) == ("FLUX.2 dev", False) and "Mistral Small 3.1" in dev.reason


def test_every_parameter_of_the_loaded_model_is_the_files(klein_dir: Path) -> None:
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    from gpu_worker.families.flux2 import flux2_vae_to_diffusers
    from gpu_worker.loader import load_pipeline

    pipe = load_pipeline(request(klein_dir, "flux-2-klein-4b.safetensors")).pipeline
    expected = {
        "transformer": convert_flux2_transformer_checkpoint_to_diffusers(load_file(str(klein_dir / "flux-2-klein-4b.safetensors"))),
        "vae": flux2_vae_to_diffusers(load_file(str(klein_dir / "VAE" / "flux2-vae.safetensors")), dict(pipe.vae.config)),
        "text_encoder": {k.removeprefix("model."): v.float() for k, v in load_file(str(klein_dir / "text_encoders" / "qwen_3_4b.safetensors")).items()},
    }
    for name, wanted in expected.items():
        loaded = getattr(pipe, name).state_dict()
        assert loaded.keys() == wanted.keys(), name
        assert all(torch.equal(loaded[k].to(wanted[k].dtype), wanted[k]) for k in loaded), name
    assert not torch.equal(pipe.vae.bn.running_mean, torch.zeros_like(pipe.vae.bn.running_mean))  # the file's statistics
    assert pipe.config.is_distilled and not load_pipeline(request(klein_dir, "flux-2-klein-base-4b.safetensors")).pipeline.config.is_distilled


def test_klein_draws_from_either_shape_with_previews_and_base_takes_cfg(klein_dir: Path, runner_and_events) -> None:
    runner, events, _ = runner_and_events
    split = drawn(runner, events, request(klein_dir, "flux-2-klein-4b.safetensors"), seeds=(7, 8), preview_every=1)
    assert all(p.std() > 1 for p in split) and not np.array_equal(split[0], split[1])
    assert {Image.open(io.BytesIO(e.png)).size for e in events if isinstance(e, JobPreview)} == {(64, 64)}
    whole = drawn(runner, events, request(klein_dir, "klein-aio.safetensors", parts=False), seeds=(7, 8))
    assert all(np.array_equal(a, b) for a, b in zip(split, whole, strict=True))  # the same weights, bit for bit
    other = drawn(runner, events, request(klein_dir, "flux-2-klein-seed1.safetensors"))
    assert np.abs(other[0] - split[0]).mean() > 1  # another file's weights, another picture
    assert not np.array_equal(drawn(runner, events, request(klein_dir, "flux-2-klein-4b.safetensors"), prompt="a blue square")[0], split[0])
    base = request(klein_dir, "flux-2-klein-base-4b.safetensors")
    guided = drawn(runner, events, base, cfg=4.0, negative="blurry")
    assert not np.array_equal(guided[0], drawn(runner, events, base, cfg=4.0, negative="a red circle")[0])  # its negative prompt counts
    assert not np.array_equal(guided[0], drawn(runner, events, base)[0])  # and CFG does


def test_klein_edits_with_its_input_pictures(klein_dir: Path, runner_and_events) -> None:
    runner, events, _ = runner_and_events
    load = request(klein_dir, "flux-2-klein-4b.safetensors")
    red, green = Image.new("RGB", (96, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 200, 60))
    green.paste((240, 240, 240), (16, 16, 48, 48))

    def edit(*pictures: Image.Image) -> np.ndarray:
        pngs = tuple(png(p) for p in pictures)
        return drawn(runner, events, load, prompt="make it blue", edit_pngs=pngs, edit_images=tuple(f"{i:064x}" for i in range(len(pngs))))[0]

    one, other, both = edit(red), edit(green), edit(red, green)
    assert not np.array_equal(one, other) and not np.array_equal(one, both)  # each input picture reaches the result
    assert not np.array_equal(one, drawn(runner, events, load, prompt="make it blue")[0])  # an edit is not the text's picture


def test_the_command_line_makes_refuses_draws_and_edits_with_klein(env: Path, cli) -> None:
    from gpu_worker.__main__ import main

    models = env / "models"  # the worker's tool in-process: the CLI's path to it is Kontext's test
    assert main(["make-tiny-checkpoint", "--arch", "flux2-klein", str(models / "flux-2-klein-4b.safetensors")]) == 0
    assert cli("checkpoints", "scan").code == 0
    missing = cli("generate", "--checkpoint", "flux-2-klein-4b", "--prompt", "a lighthouse", "--out", str(env / "out"))
    assert missing.code == 1 and missing.err.strip().splitlines() == [
        "error: flux-2-klein-4b needs a Qwen3 text encoder (put qwen_3_4b.safetensors in models/text_encoders) "
        "and a 32-channel VAE (put flux2-vae.safetensors in models/VAE); then rescan"
    ], missing.err
    make_tiny_flux2_parts(models)
    scanned = cli("checkpoints", "scan")
    assert scanned.code == 0, scanned.err
    drawn_cli = cli("generate", "--checkpoint", "flux-2-klein-4b", "--prompt", "a lighthouse", "--steps", "2", "--out", str(env / "out"))
    assert drawn_cli.code == 0, drawn_cli.err
    [picture] = (env / "out").glob("*.png")
    _, _, params = parse_generation_parameters(Image.open(picture).info["parameters"])
    assert params["Model"] == "flux-2-klein-4b" and params["CFG scale"] == "1.0" and params["Sampler"] == "Euler"
    edited = cli("generate", "--edit", str(picture), "--prompt", "make it night", "--checkpoint", "flux-2-klein-4b", "--steps", "2", "--out", str(env / "edited"))
    assert edited.code == 0, edited.err
    [result] = (env / "edited").glob("*.png")
    _, _, params = parse_generation_parameters(Image.open(result).info["parameters"])
    assert len(params["Edit images"]) == 64 and np.asarray(Image.open(result)).std() > 1
