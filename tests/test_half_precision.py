"""Half precision on the VAE calls Easel makes itself: a VAE whose activations overflow fp16 (as
SDXL's do) gives finite pictures on every path when its config says `force_upcast`, and the cached
model is whole again after an out-of-memory error in the middle of a call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bot.checkpoints.inspection import inspect_file
from common.protocol import LoadRequest
from gpu_worker.hires import upscale
from gpu_worker.latents import decode, encode
from gpu_worker.loader import load_pipeline
from gpu_worker.previews import vae_previews


@pytest.fixture(scope="module")
def half_pipe(tiny_dir: Path):
    """The tiny SD1 checkpoint in fp16 on the CPU, its VAE decoder made to overflow fp16: its first
    convolution scaled up 1e5 (a group norm after it brings float32 values back to size)."""
    path = tiny_dir / "tiny-sd1.safetensors"
    ins = inspect_file(path)
    request = LoadRequest(str(path), "tiny-sd1", "sd1", "SD1.x", ins.format, ins.pipeline_config, "epsilon")
    pipe = load_pipeline(request, "cpu", dtype=torch.float16).pipeline
    with torch.no_grad():
        pipe.vae.decoder.conv_in.weight.mul_(1e5)
        pipe.vae.encoder.conv_in.weight.mul_(1e5)
    pipe.vae.register_to_config(force_upcast=True)  # as SDXL's VAE config says
    return pipe


def latents_for(pipe) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(0)
    return torch.randn((1, 4, 8, 8), generator=generator, device=torch.device("cpu")).to(torch.float16)


def test_the_overflow_is_real_without_the_upcast(half_pipe) -> None:
    half_pipe.vae.register_to_config(force_upcast=False)
    try:
        assert not torch.isfinite(decode(half_pipe.vae, latents_for(half_pipe))).all()
    finally:
        half_pipe.vae.register_to_config(force_upcast=True)


def test_every_vae_path_gives_finite_pictures(half_pipe) -> None:
    latents = latents_for(half_pipe)
    pixels = decode(half_pipe.vae, latents)
    assert pixels.dtype == torch.float16 and torch.isfinite(pixels).all()
    assert half_pipe.vae.dtype == torch.float16  # cast back after the call
    back = encode(half_pipe.vae, pixels.clamp(-1, 1))
    assert back.dtype == torch.float16 and torch.isfinite(back).all()
    [picture] = upscale(half_pipe, latents, (128, 128), "Lanczos")  # the hires fix through a picture upscaler
    assert picture.size == (128, 128) and np.asarray(picture).std() > 0  # not one flat (black) colour
    [preview] = vae_previews(half_pipe, latents, 64, 64)
    assert np.asarray(preview).std() > 0


def test_an_out_of_memory_error_mid_call_leaves_the_vae_as_it_was(half_pipe, monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' own upcast is not undone when its decode fails; ours is, so the next job works."""
    vae = half_pipe.vae
    real = type(vae).decode

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(type(vae), "decode", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        decode(vae, latents_for(half_pipe))
    assert vae.dtype == torch.float16 and all(p.dtype == torch.float16 for p in vae.parameters())
    monkeypatch.setattr(type(vae), "decode", real)
    assert torch.isfinite(decode(vae, latents_for(half_pipe))).all()


@pytest.mark.parametrize(
    ("tiny", "real"),
    [("tiny-sd1", "sd1"), ("tiny-sd2", "sd2"), ("tiny-sdxl", "sdxl"), ("tiny-flux", "flux"), ("tiny-sd3", "sd3")],
)
def test_the_tiny_configs_carry_the_real_ones_vae_flags(tiny: str, real: str) -> None:
    """What decides half precision and latent scaling is the same on the tiny models as on what they stand for."""
    import json

    from common.bundled import CONFIG_ROOT

    def flags(name: str) -> tuple[object, ...]:
        config = json.loads((CONFIG_ROOT / name / "vae" / "config.json").read_text())
        return tuple(config.get(key) for key in ("force_upcast", "scaling_factor", "shift_factor", "latents_mean"))

    assert flags(tiny) == flags(real)
