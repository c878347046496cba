"""Z-Image, Chroma and Qwen-Image from a picture: img2img (the Vary button's path) and the hires fix
through the real runner, each through its own diffusers img2img pipeline built from the loaded
modules: the input picture reaches the result, the strength says how many steps run, and the hires
fix's second pass draws at its size."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from common.protocol import BatchProgress, JobDone, JobPart, LoadRequest, RunBatch
from tests.helpers import in_process_runner, png

MAKERS = {
    "z-image": ("gpu_worker.testing.tiny_z_image", "make_tiny_z_image"),
    "chroma": ("gpu_worker.testing.tiny_flux", "make_tiny_chroma"),
    "qwen-image": ("gpu_worker.testing.tiny_qwen_image", "make_tiny_qwen_image"),
}


@pytest.fixture(scope="module")
def runner_and_events():
    runner, events, _ = in_process_runner()
    return runner, events




@pytest.mark.parametrize("family", list(MAKERS))
def test_img2img_and_the_hires_fix_start_from_the_picture(family: str, runner_and_events, tmp_path: Path) -> None:
    import importlib

    module, function = MAKERS[family]
    path = getattr(importlib.import_module(module), function)(tmp_path / f"{family}.safetensors", shape="all-in-one")
    ins = inspect_file(path)
    load = LoadRequest(str(path), family, family, ins.architecture.label, "safetensors", ins.pipeline_config, "flow", family)
    runner, events = runner_and_events

    def run(**values) -> list[np.ndarray]:
        events.clear()
        runner.run(RunBatch.of("b", load, (JobPart("j", "a red circle", "", (7,)),), 64, 64, 4, 1.0, "Euler", "Automatic", **values))
        [done] = [e for e in events if isinstance(e, JobDone)]
        return [np.asarray(Image.open(io.BytesIO(r.png)), dtype=float) for r in done.images]

    text = run()[0]
    red = Image.new("RGB", (64, 64), (220, 30, 30))
    blue = Image.new("RGB", (64, 64), (30, 30, 220))
    from_red = run(init_png=png(red), strength=0.5)[0]
    assert [e.step for e in events if isinstance(e, BatchProgress)][-1] == 2  # 4 steps x 0.5
    from_blue = run(init_png=png(blue), strength=0.5)[0]
    # the picture reaches the result (the tiny VAEs' random weights keep little of its colour: no more is asked)
    assert np.abs(from_red - from_blue).mean() > 0.1 and not np.array_equal(from_red, text)
    hires = run(hires_scale=2.0, hires_upscaler="Lanczos", hires_denoise=0.5)[0]
    assert hires.shape == (128, 128, 3) and hires.std() > 1
    assert [e.step for e in events if isinstance(e, BatchProgress)][-1] == 6  # 4 + 4 x 0.5, one count
