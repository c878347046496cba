"""Flux ControlNets (diffusers' layout, as InstantX's and Shakker-Labs' files) through the real runner
on the tiny Flux checkpoint: weight 0 draws the picture no unit draws, bit for bit; weight 1 another;
a Union model reads each map with its control mode; the share of the steps a unit acts in holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from common.protocol import ControlNetUse, JobDone, LoadRequest
from gpu_worker.testing.tiny_controlnet import make_tiny_controlnet
from gpu_worker.testing.tiny_flux import make_tiny_flux
from tests.helpers import in_process_runner, png
from tests.test_controlnet import draw as controlnet_draw
from tests.test_controlnet import picture, pixels, unit


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("flux-controlnet")
    return {
        "flux": make_tiny_flux(folder / "flux-dev.safetensors"),
        "cn": make_tiny_controlnet("flux", folder / "flux-controlnet-canny.safetensors", seed=0),
        "union": make_tiny_controlnet("flux", folder / "flux-controlnet-union.safetensors", seed=0, layout="union"),
    }


def load(path: Path) -> LoadRequest:
    ins = inspect_file(path)
    return LoadRequest(str(path), path.stem, "flux", ins.architecture.label, "safetensors", ins.pipeline_config, "flow", path.stem)


def use(path: Path, union: int = 0) -> ControlNetUse:
    return ControlNetUse(path.stem, str(path), hashlib.sha256(path.read_bytes()).hexdigest(), "0123abcd", "flux", union, layout="flux-union" if union else "flux")


def draw(runner_and_events, checkpoint: LoadRequest, units=(), uses=(), **values) -> JobDone:
    return controlnet_draw(runner_and_events, checkpoint, units, uses, cfg=1.0, **values)  # Flux dev: distilled guidance


def test_a_flux_controlnet_steers_the_drawing_as_its_weight_says(flux_files) -> None:
    runner, events, _ = in_process_runner()
    here = (runner, events)
    checkpoint = load(flux_files["flux"])
    plain = pixels(draw(here, checkpoint))
    zero = draw(here, checkpoint, [unit(weight=0.0)], [use(flux_files["cn"])])
    assert np.array_equal(pixels(zero), plain)  # bit for bit: samples scaled to nothing change nothing
    one = draw(here, checkpoint, [unit(weight=1.0)], [use(flux_files["cn"])])
    assert np.abs(pixels(one) - plain).mean() > 1 and len(one.maps) == 1
    assert 'ControlNet 0: "Module: canny, Model: flux-controlnet-canny [0123abcd]' in one.images[0].infotext
    late = draw(here, checkpoint, [unit(weight=1.0, start=0.5)], [use(flux_files["cn"])])
    assert not np.array_equal(pixels(late), pixels(one)) and not np.array_equal(pixels(late), plain)
    # A Union model: the canny map read as canny (mode 0), the tile map as tile (mode 1).
    union = use(flux_files["union"], union=10)
    canny = pixels(draw(here, checkpoint, [unit()], [union]))
    tile = pixels(draw(here, checkpoint, [unit(module="tile_resample", threshold_a=1.0, threshold_b=None)], [union]))
    assert np.abs(canny - plain).mean() > 1 and not np.array_equal(tile, canny)
    # The hires fix's second pass reads the map again at its own size; inpainting (Only masked: the
    # map's region, as the picture's) reads it too.
    hires = {"hires_scale": 2.0, "hires_upscaler": "Lanczos", "hires_denoise": 0.5}
    enlarged = draw(here, checkpoint, [unit()], [use(flux_files["cn"])], **hires)
    assert pixels(enlarged).shape == (128, 128, 3)
    assert not np.array_equal(pixels(enlarged), pixels(draw(here, checkpoint, **hires)))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    inpaint = {"init_png": png(picture()), "mask_png": png(mask), "strength": 0.8, "only_masked": True}
    assert not np.array_equal(pixels(draw(here, checkpoint, [unit()], [use(flux_files["cn"])], **inpaint)), pixels(draw(here, checkpoint, **inpaint)))


def test_the_command_line_registers_a_flux_union_model_and_draws_with_it(cli, models: Path, tmp_path: Path) -> None:
    make_tiny_flux(models / "flux-dev.safetensors")
    folder = models / "ControlNet"
    made = cli("make-tiny-controlnet", "--base", "flux", "--layout", "union", str(folder / "FLUX.1-dev-ControlNet-Union-Pro.safetensors"))
    assert made.code == 0, made.err
    make_tiny_controlnet("sd1", folder / "control_v11p_sd15_canny.safetensors")
    assert cli("checkpoints", "scan").code == 0
    listed = cli("controlnets", "list").out
    assert "FLUX.1-dev-ControlNet-Union-Pro" in listed and "Flux ControlNet-Union (FLUX.1)" in listed
    picture().save(tmp_path / "square.png")
    square = str(tmp_path / "square.png")
    base = ("generate", "--checkpoint", "flux-dev", "--prompt", "a box", "--size", "64x64", "--steps", "3", "--seed", "2", "--cfg", "1")
    drawn = cli(*base, "--control", f"{square}:canny", "--out", str(tmp_path / "out"))  # no canny-named Flux model: the Union one
    assert drawn.code == 0, drawn.err
    assert "ControlNet 0: canny map for FLUX.1-dev-ControlNet-Union-Pro [" in drawn.out
    for flags, said in (
        (("--control", f"{square}:lineart_standard"), "no lineart ControlNet for this checkpoint is installed; put one (e.g. FLUX.1-dev-ControlNet-Union-Pro)"),
        (("--control", f"{square}:lineart_standard:FLUX.1-dev-ControlNet-Union-Pro"), "has no control type for the lineart_standard preprocessor's map"),
        (("--control", f"{square}:canny:control_v11p_sd15_canny"), "control_v11p_sd15_canny is for SD1 checkpoints, not"),
        (("--control", f"{square}:canny", "--control-mode", "My prompt is more important"), "a Flux ControlNet's control mode is Balanced"),
    ):
        refused = cli(*base, *flags, "--out", str(tmp_path / "refused"))
        assert refused.code != 0 and said in refused.err, (flags, refused.err)
    assert not (tmp_path / "refused").exists()


def test_an_xlabs_file_is_named_and_a_flux_checkpoint_is_not_taken_for_a_controlnet() -> None:
    from bot.controlnets.detection import detect_controlnet

    xlabs = {"double_blocks.0.img_attn.qkv.weight": (9, 3), "controlnet_blocks.0.weight": (3, 3), "input_hint_block.0.weight": (16, 3, 3, 3)}
    kind = detect_controlnet(xlabs)
    assert not kind.loadable and "an XLabs Flux ControlNet (Easel runs diffusers' layout" in kind.reason
    checkpoint = {"double_blocks.0.img_attn.qkv.weight": (9, 3), "img_in.weight": (3, 64), "final_layer.linear.weight": (64, 3)}
    with pytest.raises(ValueError, match="not a ControlNet"):
        detect_controlnet(checkpoint)
