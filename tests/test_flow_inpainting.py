"""Inpainting on every flow family (Flux, SD3, Chroma, Z-Image, Qwen-Image, FLUX.2 [klein]) through the
real runner, each through its diffusers inpainting pipeline built from the loaded modules, with
A1111's options: outside the mask the picture is kept exactly (the overlay), under it redrawn;
"Only masked" redraws the mask's region alone and pastes it back; "fill" starts from the colours
around the mask. And the rules: latent masked contents are SD's, refused on a flow model in one line."""

from __future__ import annotations

import importlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from common.protocol import BatchFailed, JobDone, JobPart, LoadRequest, RunBatch
from tests.helpers import in_process_runner, png

MAKERS = {
    "flux": ("gpu_worker.testing.tiny_flux", "make_tiny_flux", {}),
    "sd3": ("gpu_worker.testing.tiny_sd3", "make_tiny_sd3", {"variant": "sd35-all-in-one"}),
    "chroma": ("gpu_worker.testing.tiny_flux", "make_tiny_chroma", {"shape": "all-in-one"}),
    "z-image": ("gpu_worker.testing.tiny_z_image", "make_tiny_z_image", {"shape": "all-in-one"}),
    "qwen-image": ("gpu_worker.testing.tiny_qwen_image", "make_tiny_qwen_image", {"shape": "all-in-one"}),
    "flux2": ("gpu_worker.testing.tiny_flux2", "make_tiny_flux2", {"shape": "all-in-one"}),
}


@pytest.fixture(scope="module")
def runner_and_events():
    runner, events, _ = in_process_runner()
    return runner, events




def tiny(family: str, folder: Path) -> LoadRequest:
    module, function, options = MAKERS[family]
    make = getattr(importlib.import_module(module), function)
    out = folder / f"{family}.safetensors"
    path = make(out, options["variant"]) if "variant" in options else make(out, **options)
    ins = inspect_file(path)
    return LoadRequest(str(path), family, family, ins.architecture.label, "safetensors", ins.pipeline_config, "flow", family, variant=ins.architecture.variant)


@pytest.mark.parametrize("family", list(MAKERS))
def test_inpainting_redraws_under_the_mask_and_keeps_the_rest(family: str, runner_and_events, tmp_path: Path) -> None:
    runner, events = runner_and_events
    load = tiny(family, tmp_path)
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    picture.paste((40, 160, 60), (0, 32, 64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))

    def run(**values) -> np.ndarray:
        events.clear()
        options = {"init_png": png(picture), "mask_png": png(mask), "strength": 0.75, "mask_blur": 0} | values
        runner.run(RunBatch.of("b", load, (JobPart("j", "a blue square", "", (7,)),), 64, 64, 4, 1.0, "Euler", "Automatic", **options))
        failed = [e.message for e in events if isinstance(e, BatchFailed)]
        assert not failed, failed
        [done] = [e for e in events if isinstance(e, JobDone)]
        return np.asarray(Image.open(io.BytesIO(done.images[0].png)), dtype=float)

    source = np.asarray(picture, dtype=float)
    inside = np.asarray(mask) > 0
    whole = run()
    assert np.array_equal(whole[~inside], source[~inside])  # outside the mask: the picture, exactly
    assert np.abs(whole[inside] - source[inside]).mean() > 1  # under it: redrawn
    only = run(only_masked=True, mask_padding=8)
    assert np.array_equal(only[~inside], source[~inside]) and not np.array_equal(only, whole)
    filled = run(masked_content="fill")
    assert np.array_equal(filled[~inside], source[~inside]) and not np.array_equal(filled, whole)


def test_the_rules_take_a_flow_models_inpainting_and_refuse_latent_masked_content() -> None:
    from bot.generation.checkpoint_ref import CheckpointRef
    from bot.rules.limits import GenerationRequest, Limits, validate
    from common.errors import EaselError

    picture, mask = png(Image.new("RGB", (64, 64))), png(Image.new("L", (64, 64), 255))
    klein = CheckpointRef(
        "klein", "0" * 64, "k.safetensors", "flux2", "FLUX.2 [klein]", "safetensors", "tiny-flux2-klein", "flow", True, "", True, variant="klein"
    )

    def asked(**values: object) -> GenerationRequest:
        return GenerationRequest.of("alice", prompt="a blue square", width=64, height=64, sampler="Euler", init_image="0" * 64, mask_image="1" * 64, **values)

    valid = validate(asked(), klein, Limits(), init_png=picture, mask_png=mask)  # Klein inpaints, though it has no img2img
    assert valid.mask_png == mask
    with pytest.raises(EaselError) as caught:
        validate(asked(masked_content="latent noise"), klein, Limits(), init_png=picture, mask_png=mask)
    assert str(caught.value) == "klein is a FLUX.2 checkpoint; masked content latent noise (choose original or fill) is not supported on FLUX.2 yet"
    with pytest.raises(EaselError, match="starting from a picture"):  # img2img, without a mask: not on Klein
        validate(GenerationRequest.of("alice", prompt="x", width=64, height=64, sampler="Euler", init_image="0" * 64), klein, Limits(), init_png=picture)
