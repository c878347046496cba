"""The speed options (gpu_worker/speed.py) through the runner on the tiny Flux and SD1 models, and
the engine options as both command lines take them (common/worker_config.py)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from common.protocol import JobDone, JobPart, LoadRequest, RunBatch
from common.worker_config import WorkerConfig, add_engine_arguments, engine_flags, engine_of
from gpu_worker import speed
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline
from gpu_worker.runner import BatchRunner
from tests.a1111_infotext import parse_generation_parameters
from tests.helpers import tiny_flux_request


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> LoadRequest:
    return tiny_flux_request(tmp_path_factory.mktemp("speed") / "flux-dev.safetensors")


def drawn(request: LoadRequest, config: WorkerConfig, count_blocks: list | None = None) -> tuple[np.ndarray, dict]:
    def place(loaded) -> None:
        speed.speed_up(loaded, config, "cpu")
        if count_blocks is not None:  # the last block's last layer: it runs only when the cache lets it
            last = loaded.pipeline.transformer.single_transformer_blocks[-1].proj_out
            last.register_forward_hook(lambda *_: count_blocks.append(1))

    cache = PipelineCache("cpu", 1 << 30, 0, lambda r: load_pipeline(r, "cpu"), place)
    events: list[object] = []
    batch = RunBatch.of("b", request, (JobPart("j", "a red fox", "", (5,)),), 64, 64, 4, cfg=1.0)
    BatchRunner("cpu", cache, events.append, lambda job_id: False).run(batch)
    [done] = [e for e in events if isinstance(e, JobDone)]
    picture = np.asarray(Image.open(io.BytesIO(done.images[0].png)).convert("RGB"), dtype=np.float32)
    return picture, parse_generation_parameters(done.images[0].infotext)[2]


def test_the_first_block_cache_skips_steps_and_says_so(flux: LoadRequest) -> None:
    plain, plain_params = drawn(flux, WorkerConfig("cpu"))
    runs: list[int] = []
    # 1.0: every step after the first reuses the cache on the tiny random model (real ones use 0.05-0.1)
    cached, params = drawn(flux, WorkerConfig("cpu", cache_threshold=1.0), runs)
    assert len(runs) < 4  # fewer full steps than the 4 asked for
    assert params["First block cache"] == "1" and "First block cache" not in plain_params
    assert np.abs(cached - plain).mean() > 0  # it changes the picture: hence the infotext
    again, _ = drawn(flux, WorkerConfig("cpu", cache_threshold=1.0))
    assert np.array_equal(again, cached)  # nothing carried over from one call to the next


def test_regional_compilation_compiles_each_repeated_block_and_draws_the_same(
    flux: LoadRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring, with torch.compile's eager backend (inductor's code generation takes minutes
    here; bench/gpu_check.py times the real thing)."""
    monkeypatch.setattr(speed, "COMPILE_OPTIONS", {"backend": "eager"})
    compiled: list[str] = []
    real = torch.nn.Module.compile

    def spy(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", spy)
    plain, _ = drawn(flux, WorkerConfig("cpu"))
    assert compiled == []
    picture, params = drawn(flux, WorkerConfig("cpu", compile=True))
    assert set(compiled) == {"FluxTransformerBlock", "FluxSingleTransformerBlock"}
    assert np.array_equal(picture, plain) and "First block cache" not in params


def test_channels_last_draws_the_same_sd_picture(tiny_dir: Path) -> None:
    path = tiny_dir / "tiny-sd1.safetensors"
    ins = inspect_file(path)
    request = LoadRequest(str(path), "tiny-sd1", "sd1", "SD1.x", ins.format, ins.pipeline_config, "epsilon")
    loaded = load_pipeline(request, "cpu")
    generator = torch.Generator("cpu")
    before = loaded.pipeline("a fox", num_inference_steps=2, width=64, height=64, generator=generator.manual_seed(1), output_type="np").images
    speed.channels_last(loaded)
    assert loaded.pipeline.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    after = loaded.pipeline("a fox", num_inference_steps=2, width=64, height=64, generator=generator.manual_seed(1), output_type="np").images
    assert np.abs(before - after).max() < 1e-4


def test_the_engine_options_read_the_same_on_both_command_lines() -> None:
    worker = argparse.ArgumentParser()
    add_engine_arguments(worker, {"EASEL_PRECISION": "bf16", "EASEL_COMPILE": "true", "EASEL_CACHE_THRESHOLD": "0.08"})
    options = engine_of(worker.parse_args([]))
    assert options == {"precision": "bf16", "vae_precision": "auto", "compile": True, "cache_threshold": 0.08}
    assert engine_of(worker.parse_args(engine_flags(options))) == options  # a child worker gets the same
    assert engine_of(worker.parse_args(["--no-compile", "--vae-precision", "full"]))["compile"] is False
    bot_cli = argparse.ArgumentParser()
    add_engine_arguments(bot_cli)  # no environment: the bot's settings fill what is not given
    assert engine_of(bot_cli.parse_args(["--cache-threshold", "0.1"])) == {"cache_threshold": 0.1}
    with pytest.raises(SystemExit):
        bot_cli.parse_args(["--cache-threshold", "3"])
    assert WorkerConfig(**options).compile is True  # type: ignore[arg-type]


SDPA_PROCESSORS = {"AttnProcessor2_0", "FluxAttnProcessor", "JointAttnProcessor2_0"}  # torch's scaled_dot_product_attention


def test_every_attention_runs_through_pytorchs_sdpa(tiny_dir: Path, flux: LoadRequest, tmp_path: Path) -> None:
    """PyTorch's fused attention (flash / memory-efficient kernels on CUDA) in every denoiser, VAE and
    text encoder of every family, as loaded: nothing falls back to the slow, memory-hungry attention."""
    from gpu_worker.testing.tiny_sd3 import make_tiny_sd3

    make_tiny_sd3(tmp_path / "sd35.safetensors", "sd35-all-in-one")
    requests = [flux]
    for family, path in (("sd1", tiny_dir / "tiny-sd1.safetensors"), ("sdxl", tiny_dir / "tiny-sdxl.safetensors"), ("sd3", tmp_path / "sd35.safetensors")):
        ins = inspect_file(path)
        requests.append(LoadRequest(str(path), path.stem, family, ins.architecture.label, ins.format, ins.pipeline_config, "flow" if family == "sd3" else "epsilon", path.stem))  # fmt: skip
    for request in requests:
        pipe = load_pipeline(request, "cpu").pipeline
        denoiser = getattr(pipe, "transformer", None) or pipe.unet
        for part in (denoiser, pipe.vae):
            assert {type(p).__name__ for p in part.attn_processors.values()} <= SDPA_PROCESSORS, request.family
        encoders = [getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")]
        assert {e.config._attn_implementation for e in encoders if e is not None} == {"sdpa"}, request.family
