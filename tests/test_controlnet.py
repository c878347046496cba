"""ControlNet through the real runner on tiny files in the real layouts (A1111's original ControlNet
layout for SD1, diffusers' for SDXL): weight 0 draws the picture no unit draws, bit for bit; weight
1 another; a unit acts only in the share of the steps it covers (counted on the model's calls);
three units at once; the control modes; the hires fix, Only masked and an inpainting checkpoint;
the maps sent back, checked like pictures; a ControlNet for another base refused in one line."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bot.checkpoints.inspection import inspect_file
from common.control import ControlUnit
from common.protocol import BatchFailed, ComponentUse, ControlNetUse, JobDone, JobPart, LoadRequest, RunBatch
from gpu_worker.control_maps import control_map
from gpu_worker.testing.tiny import make_tiny_checkpoint
from gpu_worker.testing.tiny_controlnet import make_tiny_controlnet
from tests.helpers import in_process_runner, png

SIZE = 64


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("controlnet")
    made = {
        "sd1": make_tiny_checkpoint("sd1", folder / "tiny-sd1.safetensors", seed=0),
        "sdxl": make_tiny_checkpoint("sdxl", folder / "tiny-sdxl.safetensors", seed=0),
        "sd1-inpainting": make_tiny_checkpoint("sd1", folder / "tiny-sd1-inpainting.safetensors", seed=0, inpainting=True),
        "cn-sd1": make_tiny_controlnet("sd1", folder / "control_tiny_sd15_canny.safetensors", seed=0),
        "cn-sd1-pth": make_tiny_controlnet("sd1", folder / "control_tiny_sd15_tile.pth", seed=5),
        "cn-sdxl": make_tiny_controlnet("sdxl", folder / "controlnet-tiny-sdxl.safetensors", seed=0),
    }
    return made


@pytest.fixture(scope="module")
def runner_and_events():
    runner, events, _ = in_process_runner()
    return runner, events


def picture() -> Image.Image:
    drawn = Image.new("RGB", (SIZE, SIZE), (30, 30, 30))
    ImageDraw.Draw(drawn).rectangle((16, 16, 47, 47), fill=(230, 230, 230))
    return drawn


def load(path: Path, family: str) -> LoadRequest:
    config = inspect_file(path).pipeline_config
    return LoadRequest(str(path), path.stem, family, family, "safetensors", config, "epsilon", hashlib.sha256(path.name.encode()).hexdigest())


def use(path: Path, base: str) -> ControlNetUse:
    return ControlNetUse(path.stem, str(path), hashlib.sha256(path.read_bytes()).hexdigest(), "0123abcd", base)


def draw(runner_and_events, checkpoint: LoadRequest, units=(), uses=(), cfg: float = 5.0, **values) -> JobDone:
    runner, events = runner_and_events
    events.clear()
    pictures = tuple(png(picture()) for _ in units)
    batch = RunBatch.of(
        "b", checkpoint, (JobPart("j", "a box", "", (3,)),), SIZE, SIZE, 4, cfg, "Euler", "Automatic",
        control=tuple(units), controlnets=tuple(uses), control_pngs=pictures, **values,
    )  # fmt: skip
    runner.run(batch)
    failed = [e.message for e in events if isinstance(e, BatchFailed)]
    assert not failed, failed
    [done] = [e for e in events if isinstance(e, JobDone)]
    return done


def pixels(done: JobDone, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(done.images[index].png)), dtype=np.int16)


def unit(**values) -> ControlUnit:
    return ControlUnit(**({"image": "ab" * 32, "module": "canny", "threshold_a": 100.0, "threshold_b": 200.0} | values))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_weight_zero_is_no_controlnet_and_weight_one_changes_the_picture(files, runner_and_events, family: str) -> None:
    checkpoint, model = load(files[family], family), use(files[f"cn-{family}"], family)
    plain = pixels(draw(runner_and_events, checkpoint))
    zero = draw(runner_and_events, checkpoint, [unit(weight=0.0)], [model])
    assert np.array_equal(pixels(zero), plain)  # bit for bit: residuals of zero change nothing
    one = draw(runner_and_events, checkpoint, [unit(weight=1.0)], [model])
    assert np.abs(pixels(one) - plain).mean() > 1
    assert "ControlNet 0: \"Module: canny, Model: " in one.images[0].infotext
    # The map comes back checked, as every picture that leaves the worker: the square's outline.
    [shown] = one.maps
    assert shown.nsfw_score is not None
    outline = np.asarray(Image.open(io.BytesIO(shown.png)).convert("L")) > 0
    assert outline[16, 16:48].any() and not outline[30, 30] and not outline[2, 2]


def count_calls(runner, model_sha: str) -> list[int]:
    """How many times the cached ControlNet runs, from now on (a forward hook on the model itself)."""
    calls: list[int] = []
    [model] = [m for (sha, *_), m in runner.controlnets._models.items() if sha == model_sha]
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_a_unit_acts_only_in_the_steps_it_covers(files, runner_and_events) -> None:
    runner, _ = runner_and_events
    checkpoint, model = load(files["sd1"], "sd1"), use(files["cn-sd1"], "sd1")
    draw(runner_and_events, checkpoint, [unit()], [model])  # loaded and cached
    calls = count_calls(runner, model.sha256)
    # Four Euler steps: the unit sees 0, 1/4, 2/4 and 3/4 of them done at its calls (the extension's
    # guidance_stopped: before its start or past its end it sits out).
    for start, end, expected in ((0.0, 1.0, 4), (0.5, 1.0, 2), (0.0, 0.5, 3), (0.3, 0.6, 1)):
        calls.clear()
        draw(runner_and_events, checkpoint, [unit(start=start, end=end)], [model])
        assert len(calls) == expected, (start, end)


def test_three_units_at_once_and_each_control_mode(files, runner_and_events) -> None:
    checkpoint = load(files["sd1"], "sd1")
    canny, tile = use(files["cn-sd1"], "sd1"), use(files["cn-sd1-pth"], "sd1")
    one = draw(runner_and_events, checkpoint, [unit()], [canny])
    units = [unit(), unit(module="tile_resample", threshold_a=2.0, threshold_b=None), unit(module="scribble_xdog", threshold_a=32.0, threshold_b=None, weight=0.5)]
    three = draw(runner_and_events, checkpoint, units, [canny, tile, canny])
    assert len(three.maps) == 3 and not np.array_equal(pixels(three), pixels(one))
    assert all(f"ControlNet {i}:" in three.images[0].infotext for i in range(3))
    modes = {mode: pixels(draw(runner_and_events, checkpoint, [unit(mode=mode)], [canny])) for mode in ("My prompt is more important", "ControlNet is more important")}
    for mode, drawn in modes.items():
        assert np.abs(drawn - pixels(one)).mean() > 0.5, mode


def test_hires_only_masked_and_an_inpainting_checkpoint_take_units(files, runner_and_events) -> None:
    sd1, model = load(files["sd1"], "sd1"), use(files["cn-sd1"], "sd1")
    hires = draw(runner_and_events, sd1, [unit()], [model], hires_scale=1.5, hires_denoise=0.5)
    assert Image.open(io.BytesIO(hires.images[0].png)).size == (96, 96)
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (8, 8, 32, 32))
    source = np.asarray(picture(), dtype=np.int16)
    inside = np.asarray(mask) > 0
    for checkpoint in (sd1, load(files["sd1-inpainting"], "sd1")):
        masked = draw(runner_and_events, checkpoint, [unit()], [model], init_png=png(picture()), mask_png=png(mask), mask_blur=0, only_masked=True)
        assert np.array_equal(pixels(masked)[~inside], source[~inside])


def test_a_controlnet_for_another_base_is_refused_in_one_line(files, runner_and_events) -> None:
    runner, events = runner_and_events
    events.clear()
    batch = RunBatch.of(
        "b", load(files["sdxl"], "sdxl"), (JobPart("j", "a box", "", (3,)),), SIZE, SIZE, 2, 5.0, "Euler", "Automatic",
        control=(unit(),), controlnets=(use(files["cn-sd1"], "sd1"),), control_pngs=(png(picture()),),
    )  # fmt: skip
    runner.run(batch)
    [failed] = [e for e in events if isinstance(e, BatchFailed)]
    assert "control_tiny_sd15_canny" in failed.message and "\n" not in failed.message


def test_the_preprocessors_make_the_extensions_maps() -> None:
    square = picture()
    canny = np.asarray(control_map(square, unit(), 0).convert("L")) > 0
    edges = np.zeros((SIZE, SIZE), bool)
    edges[15:17, 15:49] = edges[47:49, 15:49] = edges[15:49, 15:17] = edges[15:49, 47:49] = True
    assert canny[edges].mean() > 0.45 and not canny[~edges].any()  # its outline, nothing else
    inverted = np.asarray(control_map(square, unit(module="invert"), 0))
    assert np.array_equal(inverted, 255 - np.asarray(square))
    binary = np.asarray(control_map(square, unit(module="threshold", threshold_a=127.0), 0))
    assert set(np.unique(binary)) == {0, 255} and binary[30, 30, 0] == 255 and binary[2, 2, 0] == 0
    shuffled = [np.asarray(control_map(square, unit(module="shuffle"), seed)) for seed in (1, 1, 2)]
    assert np.array_equal(shuffled[0], shuffled[1]) and not np.array_equal(shuffled[0], shuffled[2])
    blurred = np.asarray(control_map(square, unit(module="blur_gaussian", threshold_a=4.0), 0), dtype=int)
    assert 30 < blurred[16, 32, 0] < 230  # the square's edge is soft


def test_the_command_line_registers_draws_and_makes_it_again(cli, models: Path, add_tiny, tmp_path: Path) -> None:
    add_tiny("sd1", "tiny.safetensors")
    folder = models / "ControlNet"
    made = cli("make-tiny-controlnet", "--base", "sd1", str(folder / "control_v11p_sd15_canny.pth"))
    assert made.code == 0 and "tiny sd1 ControlNet" in made.out
    wrong = cli("make-tiny-controlnet", "--base", "sd1", str(folder / "x.ckpt"))
    assert wrong.code != 0 and "ends in .safetensors or .pth" in wrong.err
    make_tiny_controlnet("sdxl", folder / "controlnet-tiny-sdxl.safetensors")
    adapter = cli("make-tiny-ip-adapter", "--base", "sd1", str(models / "ipadapter" / "ip-adapter_tiny_sd15.safetensors"))
    assert adapter.code == 0 and "tiny sd1 IP-Adapter" in adapter.out
    assert cli("checkpoints", "scan").code == 0
    square_first = tmp_path / "square.png"
    picture().save(square_first)
    base_args = ("generate", "--checkpoint", "tiny", "--prompt", "a box", "--size", "64x64", "--steps", "3", "--seed", "2")
    unencoded = cli(*base_args, "--control", f"{square_first}:ip-adapter_clip_h", "--out", str(tmp_path / "refused"))
    assert unencoded.code != 0 and "reads pictures with a CLIP vision encoder" in unencoded.err  # none installed yet
    encoder = cli("make-tiny-component", "--kind", "clip-vision", str(models / "clip_vision" / "clip_vision_tiny.safetensors"))
    assert encoder.code == 0 and cli("checkpoints", "scan").code == 0
    assert "CLIP vision (width 32, embedding 16)" in cli("clip-vision", "list").out
    listed = cli("controlnets", "list").out
    assert "control_v11p_sd15_canny" in listed and "ControlNet (SD1.x)" in listed and "ControlNet (SDXL)" in listed
    assert "IP-Adapter (SD1.x)" in listed
    assert "tiny" in cli("checkpoints", "list").out and "control_v11p" not in cli("checkpoints", "list").out
    info = cli("controlnets", "info", "control_v11p_sd15_canny").out
    assert "original layout" in info and "pickle" in info
    picture().save(tmp_path / "square.png")
    square = str(tmp_path / "square.png")
    base = ("generate", "--checkpoint", "tiny", "--prompt", "a box", "--size", "64x64", "--steps", "3", "--seed", "2")
    drawn = cli(
        *base, "--control", f"{square}:canny:0.8", "--control", f"{square}:ip-adapter_clip_h", "--control-end", "0.5",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert drawn.code == 0, drawn.err
    assert "ControlNet 0: canny map for control_v11p_sd15_canny [" in drawn.out
    assert "ControlNet 1: ip-adapter_clip_h map for ip-adapter_tiny_sd15 [" in drawn.out
    [result] = [p for p in (tmp_path / "out").iterdir() if "-control-" not in p.name]  # and its two maps
    params = Image.open(result).info["parameters"]
    assert "Weight: 0.8" in params and "Guidance End: 0.5" in params and "Control images: " in params
    again = cli("generate", "--from-picture", str(result), "--out", str(tmp_path / "again"))  # "Make this here"
    assert again.code == 0, again.err
    [redrawn] = [p for p in (tmp_path / "again").iterdir() if "-control-" not in p.name]
    assert np.array_equal(np.asarray(Image.open(redrawn)), np.asarray(Image.open(result)))
    for flags, said in (
        ((f"{square}:depth_zoe",), "depth_zoe preprocessor needs its annotator model (ZoeD_M12_N.pt)"),
        ((f"{square}:sharpen",), "no ControlNet preprocessor named 'sharpen'"),
        ((f"{square}:canny:3",), "a ControlNet weight is between 0 and 2, not 3"),
        ((f"{square}:canny:controlnet-tiny-sdxl",), "controlnet-tiny-sdxl is for SDXL checkpoints, not SD1.x"),
        ((f"{square}:canny",) * 4, "at most 3 ControlNet units, not 4"),
        ((f"{tmp_path / 'nothing.png'}:canny",), "nothing.png: No such file or directory"),
        ((square,), "give PICTURE:PREPROCESSOR[:MODEL][:WEIGHT]"),
    ):
        argv = [arg for flag in flags for arg in ("--control", flag)]
        refused = cli(*base, *argv, "--out", str(tmp_path / "refused"))
        assert refused.code != 0 and said in refused.err, (flags, refused.err)
        assert not (tmp_path / "refused").exists()
    backwards = cli(*base, "--control", f"{square}:canny", "--control-start", "0.6", "--control-end", "0.2", "--out", str(tmp_path / "refused"))
    assert backwards.code != 0 and "start first" in backwards.err


def test_a_union_model_reads_each_map_with_its_control_type(files, runner_and_events, tmp_path: Path) -> None:
    union_file = make_tiny_controlnet("sdxl", tmp_path / "controlnet-union-sdxl-promax.safetensors", layout="union")
    checkpoint, union = load(files["sdxl"], "sdxl"), replace(use(union_file, "sdxl"), union_types=8)
    plain = pixels(draw(runner_and_events, checkpoint))
    assert np.array_equal(pixels(draw(runner_and_events, checkpoint, [unit(weight=0.0)], [union])), plain)
    canny = pixels(draw(runner_and_events, checkpoint, [unit()], [union]))
    tile = pixels(draw(runner_and_events, checkpoint, [unit(module="tile_resample", threshold_a=1.0, threshold_b=None)], [union]))
    assert np.abs(canny - plain).mean() > 1 and np.abs(tile - canny).mean() > 0.5  # each type read its own way


async def test_the_rules_pick_and_hold_a_unit_to_its_model(tmp_path: Path, tiny_dir: Path) -> None:
    from bot.controlnets.registry import ControlNetRegistry
    from bot.db import open_database
    from bot.generation.checkpoint_ref import CheckpointRef
    from bot.rules.limits import GenerationRequest, Limits, validate
    from common.control import ControlError
    from common.errors import EaselError
    from common.parameters import Parameters

    folder = tmp_path / "models" / "ControlNet"
    make_tiny_controlnet("sdxl", folder / "controlnet-union-sdxl-promax.safetensors", layout="union")
    make_tiny_controlnet("sd1", folder / "control_v11p_sd15_canny.safetensors")
    make_tiny_controlnet("sd1", folder / "control_sd15_canny.safetensors", seed=3)
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        registry = ControlNetRegistry(db, tmp_path / "models")
        scanned = await registry.scan()
        assert len(scanned.added) == 3
        assert (await registry.for_unit("", "canny", "sd1")).name == "control_v11p_sd15_canny"  # v1.1 first
        make_tiny_controlnet("sd1", folder / "control_v11p_sd15_lineart.safetensors", seed=4)
        make_tiny_controlnet("sd1", folder / "control_v11p_sd15s2_lineart_anime.safetensors", seed=5)
        await registry.scan()
        assert (await registry.for_unit("", "lineart_anime", "sd1")).name == "control_v11p_sd15s2_lineart_anime"
        assert (await registry.for_unit("", "lineart_realistic", "sd1")).name == "control_v11p_sd15_lineart"
        picked = await registry.for_unit("", "canny", "sdxl")  # no canny-named SDXL model: the Union one
        assert picked.name == "controlnet-union-sdxl-promax" and picked.union_types == 8
        with pytest.raises(ControlError, match="no shuffle ControlNet for this checkpoint is installed"):
            await registry.for_unit("", "shuffle", "sdxl")
        with pytest.raises(ControlError, match="name the ControlNet model to run"):
            await registry.for_unit("", "none", "sd1")
        # An A1111 picture's units (its extension keeps no picture for them): drawn without, said so.
        import shutil

        from bot.checkpoints.registry import CheckpointRegistry
        from bot.generation.service import GenerationService
        from bot.images.infotext import parse_infotext as read_infotext
        from bot.jobs import Asker, Jobs, Place

        shutil.copy(tiny_dir / "tiny-sd1.safetensors", tmp_path / "models" / "tiny.safetensors")
        checkpoints = CheckpointRegistry(db, tmp_path / "models")
        await checkpoints.scan()
        jobs = Jobs(checkpoints, GenerationService(db, [], Limits()), None, controlnets=registry)  # plans only: no worker
        text = 'a box\nSteps: 4, Seed: 5, Size: 64x64, Model: tiny, ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0"'
        plan = await jobs.plan_from_infotext(Asker.host(), Place.command_line(), read_infotext(text))
        [spec] = plan.specs
        assert spec.parameters.control == () and any("ControlNet units were left out" in n for n in spec.notes)
    finally:
        await db.close()

    xl = CheckpointRef("x", "ab" * 32, "/x", "sdxl", "SDXL", "safetensors", "tiny-sdxl", "epsilon", True, "", True)
    request = GenerationRequest(Parameters(prompt="a box", control=(unit(module="shuffle", threshold_a=None, threshold_b=None),)), "u")
    with pytest.raises(EaselError, match="has no control type for the shuffle preprocessor's map"):
        validate(request, xl, Limits(), controlnets=(picked,), control_pngs=(png(picture()),))
    sd1 = replace(xl, family="sd1", architecture="SD1.x")
    with pytest.raises(EaselError, match=r"is for SDXL checkpoints, not SD1\.x"):
        validate(request, sd1, Limits(), controlnets=(picked,), control_pngs=(png(picture()),))
    sd3 = replace(xl, family="sd3", architecture="SD3.5 Large")
    with pytest.raises(EaselError, match=r"ControlNet runs on SD1, SD2, SDXL and FLUX\.1 checkpoints, not SD3\.5 Large"):
        validate(request, sd3, Limits())


def ip_adapter(base: str, folder: Path) -> tuple[Path, Path, ControlNetUse]:
    """A tiny h94-layout IP-Adapter for `base`, the tiny CLIP vision encoder, and the unit's model."""
    from gpu_worker.testing.tiny_controlnet import make_tiny_clip_vision, make_tiny_ip_adapter

    adapter = make_tiny_ip_adapter(base, folder / f"ip-adapter_tiny_{'sd15' if base == 'sd1' else base}.safetensors")
    encoder = make_tiny_clip_vision(folder / "clip_vision_tiny.safetensors")
    encoded = ComponentUse("clip_vision", encoder.name, str(encoder), "e" * 64)
    return adapter, encoder, replace(use(adapter, base), layout="ip-adapter", encoder=encoded)


def test_an_ip_adapter_reads_its_picture_and_leaves_the_pipeline_as_it_was(files, runner_and_events, tmp_path: Path) -> None:
    """h94's layout through diffusers' loader: weight 0 draws the picture no unit draws, bit for bit;
    1 another; acting for half the steps a third; and after the batch the UNet is the checkpoint's
    again (the adapter unloaded: the next plain job draws the plain picture)."""
    adapter, encoder, model = ip_adapter("sd1", tmp_path)
    checkpoint = load(files["sd1"], "sd1")
    plain = pixels(draw(runner_and_events, checkpoint))
    reference = unit(module="ip-adapter_clip_h", threshold_a=None, threshold_b=None)
    assert np.array_equal(pixels(draw(runner_and_events, checkpoint, [replace(reference, weight=0.0)], [model])), plain)
    full = draw(runner_and_events, checkpoint, [reference], [model])
    assert np.abs(pixels(full) - plain).mean() > 1
    assert 'ControlNet 0: "Module: ip-adapter_clip_h, Model: ip-adapter_tiny_sd15 [' in full.images[0].infotext
    half = pixels(draw(runner_and_events, checkpoint, [replace(reference, end=0.5)], [model]))
    assert not np.array_equal(half, pixels(full)) and not np.array_equal(half, plain)
    with_canny = draw(runner_and_events, checkpoint, [reference, unit()], [model, use(files["cn-sd1"], "sd1")])
    assert len(with_canny.maps) == 2  # an IP-Adapter beside a ControlNet
    assert np.array_equal(pixels(draw(runner_and_events, checkpoint)), plain)  # unloaded after each batch
    # h94's .bin: the two parts as nested dicts in a pickle, vetted by the allow-list reader
    import torch
    from safetensors.torch import load_file

    from bot.controlnets.registry import examine_controlnet

    flat = load_file(str(adapter))
    nested = {part: {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(part + ".")} for part in ("image_proj", "ip_adapter")}
    torch.save(nested, tmp_path / "ip-adapter_tiny_sd15.bin")
    found = examine_controlnet(tmp_path / "ip-adapter_tiny_sd15.bin")
    assert (found.layout, found.base, found.format) == ("ip-adapter", "sd1", "pickle")
    pickled = replace(model, path=str(tmp_path / "ip-adapter_tiny_sd15.bin"), sha256="9" * 64)
    assert np.array_equal(pixels(draw(runner_and_events, checkpoint, [reference], [pickled])), pixels(full))
    # An encoder file missing its layers' tensors: one line, and the next job draws as ever.
    from safetensors.torch import save_file

    broken = {k: v for k, v in load_file(str(encoder)).items() if ".mlp." not in k}
    save_file(broken, str(tmp_path / "clip_vision_broken.safetensors"))
    bad = replace(model, encoder=ComponentUse("clip_vision", "clip_vision_broken.safetensors", str(tmp_path / "clip_vision_broken.safetensors"), "8" * 64))
    runner, events = runner_and_events
    events.clear()
    runner.run(RunBatch.of("b", checkpoint, (JobPart("j", "a box", "", (3,)),), SIZE, SIZE, 2, 5.0, "Euler", "Automatic",
                           control=(reference,), controlnets=(bad,), control_pngs=(png(picture()),)))  # fmt: skip
    [failed] = [e for e in events if isinstance(e, BatchFailed)]
    assert "clip_vision_broken.safetensors is not one in transformers' layout" in failed.message
    assert np.array_equal(pixels(draw(runner_and_events, checkpoint)), plain)


def test_an_sdxl_ip_adapter_reads_its_picture_through_the_same_path(files, runner_and_events, tmp_path: Path) -> None:
    """h94's SDXL layout (its cross-attention layers numbered over SDXL's blocks) on the tiny SDXL
    checkpoint: weight 0 is the plain picture bit for bit, weight 1 another, and the UNet is the
    checkpoint's again after the batch."""
    _, _, model = ip_adapter("sdxl", tmp_path)
    checkpoint = load(files["sdxl"], "sdxl")
    plain = pixels(draw(runner_and_events, checkpoint))
    reference = unit(module="ip-adapter_clip_g", threshold_a=None, threshold_b=None)
    assert np.array_equal(pixels(draw(runner_and_events, checkpoint, [replace(reference, weight=0.0)], [model])), plain)
    assert np.abs(pixels(draw(runner_and_events, checkpoint, [reference], [model])) - plain).mean() > 1
    assert np.array_equal(pixels(draw(runner_and_events, checkpoint)), plain)
