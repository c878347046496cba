"""Half precision on the VAE calls Easel makes itself: a VAE whose activations overflow fp16 (as
SDXL's do) gives finite pictures on every path when its config says `force_upcast`, and the cached
model is whole again after an out-of-memory error in the middle of a call."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from common.control import ControlUnit
from common.protocol import (
    BatchFailed,
    ComponentUse,
    ControlNetUse,
    JobDone,
    JobPart,
    LoadRequest,
    LoraUse,
    RunBatch,
    VaeUse,
)
from gpu_worker.cache import PipelineCache
from gpu_worker.hires import upscale
from gpu_worker.latents import decode, encode, runs_in
from gpu_worker.loader import load_pipeline
from gpu_worker.previews import vae_previews
from gpu_worker.runner import BatchRunner
from gpu_worker.testing.tiny_controlnet import make_tiny_controlnet


def sd1_request(tiny_dir: Path) -> LoadRequest:
    path = tiny_dir / "tiny-sd1.safetensors"
    ins = inspect_file(path)
    return LoadRequest(str(path), "tiny-sd1", "sd1", "SD1.x", ins.format, ins.pipeline_config, "epsilon")


def overflowing(vae) -> None:
    """A VAE made to overflow fp16 as SDXL's does: its first convolutions scaled up 1e5 (a group
    norm after each brings float32 values back to size)."""
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)
        vae.encoder.conv_in.weight.mul_(1e5)
    vae.register_to_config(force_upcast=True)  # as SDXL's VAE config says


@pytest.fixture(scope="module")
def half_pipe(tiny_dir: Path):
    """The tiny SD1 checkpoint in fp16 on the CPU, its VAE made to overflow fp16."""
    pipe = load_pipeline(sd1_request(tiny_dir), "cpu", dtype=torch.float16).pipeline
    overflowing(pipe.vae)
    return pipe


def latents_for(pipe) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(0)
    return torch.randn((1, 4, 8, 8), generator=generator, device=torch.device("cpu")).to(torch.float16)


def test_the_overflow_is_real_without_the_upcast(half_pipe) -> None:
    vae = half_pipe.vae
    with torch.no_grad():
        assert not torch.isfinite(vae.decode(latents_for(half_pipe) / vae.config.scaling_factor).sample).all()


def test_every_vae_path_gives_finite_pictures(half_pipe) -> None:
    latents = latents_for(half_pipe)
    pixels = decode(half_pipe.vae, latents)
    assert pixels.dtype == torch.float16 and torch.isfinite(pixels).all()
    assert half_pipe.vae.dtype == torch.float16  # cast back after the call
    assert runs_in(half_pipe.vae) == torch.float32  # it overflowed: its calls start in float32 from now on
    back = encode(half_pipe.vae, pixels.clamp(-1, 1))
    assert back.dtype == torch.float16 and torch.isfinite(back).all()
    [picture] = upscale(half_pipe, latents, (128, 128), "Lanczos")  # the hires fix through a picture upscaler
    assert picture.size == (128, 128) and np.asarray(picture).std() > 0  # not one flat (black) colour
    [preview] = vae_previews(half_pipe, latents, 64, 64)
    assert np.asarray(preview).std() > 0


def test_a_vae_is_judged_by_what_it_gives_not_by_its_config(tiny_dir: Path) -> None:
    """The bundled SDXL config says force_upcast for every SDXL file, the fp16-fix VAE's too: a VAE
    whose fp16 results are finite keeps running in fp16 (its memory and speed), the same numbers as
    an upcast call within fp16's precision."""
    pipe = load_pipeline(sd1_request(tiny_dir), "cpu", dtype=torch.float16).pipeline
    pipe.vae.register_to_config(force_upcast=True)
    latents = latents_for(pipe)
    pixels = decode(pipe.vae, latents)
    assert runs_in(pipe.vae) == torch.float16 and torch.isfinite(pixels).all()
    reference = pipe.vae.to(dtype=torch.float32).decode(latents.float() / pipe.vae.config.scaling_factor).sample
    assert (pixels.float() - reference).abs().max() < 0.02  # fp16's own rounding, on values in -1..1


def test_an_out_of_memory_error_mid_call_leaves_the_vae_as_it_was(half_pipe, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory inside the float32 call (the upcast is where the memory goes): the VAE is
    cast back to fp16 all the same, so the next job works."""
    vae = half_pipe.vae
    real = type(vae).decode

    def out_of_memory(self, *args, **kwargs):
        if self.dtype == torch.float32:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, *args, **kwargs)

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


# --- the half-precision tier: the worker's paths run in fp16 and bf16 as in float32 -----------------

PATHS = {
    "txt2img": {},
    "img2img": {"init": True, "strength": 0.6},
    "inpaint, latent noise": {"init": True, "mask": True, "strength": 0.8, "masked_content": "latent noise"},
    "inpaint, original": {"init": True, "mask": True, "strength": 0.8},
    "hires, Latent": {"hires_scale": 2.0, "hires_denoise": 0.5},
    "hires, Lanczos": {"hires_scale": 2.0, "hires_denoise": 0.5, "hires_upscaler": "Lanczos"},
    "LoRA": {"lora": True},
    # The Regional Prompter's regions, a base prompt and a negative split like the prompt, through both passes.
    "regions, hires": {
        "prompt": "a red fox ADDBASE a forest ADDCOL a lake", "negative": "fog BREAK rain BREAK snow",
        "regions": "1,2 base 0.3", "hires_scale": 2.0, "hires_denoise": 0.5,
    },
    # Two ControlNet units (their model in the checkpoint's dtype); the hires pass's map is the same
    # map resized (tests/test_controlnet.py), so pass one alone.
    "ControlNet": {"control": 2},
    # An edit (FLUX.1 Kontext's pass): two input pictures read beside the picture drawn.
    "edit, two pictures": {"edit": 2, "cfg": 1.0},
}


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def tier_batch(load: LoadRequest, path: str, loras: Path, seeds: tuple[int, ...] = (7,)) -> RunBatch:
    options = dict(PATHS[path])
    prompt, negative = options.pop("prompt", "a red fox"), options.pop("negative", "")
    extra: dict = {}
    if options.pop("init", False):
        picture = Image.new("RGB", (64, 64), (200, 40, 40))
        picture.paste((40, 160, 60), (16, 16, 48, 48))
        extra["init_png"] = png(picture)
    if options.pop("mask", False):
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (8, 8, 40, 40))
        extra["mask_png"] = png(mask)
    for i in range(options.pop("edit", 0)):
        picture = Image.new("RGB", (96 - 32 * i, 64), (200, 40 + 100 * i, 40))
        picture.paste((40, 160, 60), (16, 16, 48, 48))
        extra["edit_pngs"] = (*extra.get("edit_pngs", ()), png(picture))
        options["edit_images"] = (*options.get("edit_images", ()), f"{i:064x}")
    for i in range(options.pop("control", 0)):
        picture = Image.new("RGB", (64, 64), (20, 20, 20))
        picture.paste((230, 230, 230), (8 + 8 * i, 16, 48, 40))
        file = loras / f"controlnet-{load.family}.safetensors"
        if not file.exists():
            make_tiny_controlnet(load.family, file, seed=0)
        extra["control_pngs"] = (*extra.get("control_pngs", ()), png(picture))
        layout = "flux" if load.family == "flux" else ""  # diffusers' Flux layout (InstantX's files)
        extra["controlnets"] = (*extra.get("controlnets", ()), ControlNetUse(f"cn{i}", str(file), "2" * 64, "2" * 8, load.family, layout=layout))
        unit = ControlUnit(f"{i:064x}", ("canny", "scribble_xdog")[i], weight=0.5, threshold_a=(100.0, 32.0)[i])
        options["control"] = (*options.get("control", ()), unit)
    if options.pop("lora", False):
        file = loras / f"lora-{load.family}.safetensors"
        # At 0.1: the tiny LoRA's random layers at full strength make the tiny UNet chaotic (each
        # layer doubles a rounding difference: 70 % apart at its output in fp16, 0.2 % at 0.25).
        extra["loras"] = (LoraUse("tiny", str(file), "1" * 64, "1" * 12, 0.1, 0.1),)
    return RunBatch.of(
        batch_id=f"half-{path}", load=load, jobs=(JobPart("j", prompt, negative, seeds),), width=64, height=64,
        steps=3, sampler="Euler", schedule="Automatic", model_name=load.name, **({"cfg": 5.0} | options), **extra,
    )  # fmt: skip


DTYPES = {"full": torch.float32, "half": torch.float16, "bf16": torch.bfloat16}
# The largest mean difference from float32's picture, in levels of 255: fp16 keeps 10 bits of
# mantissa, bf16 7. Measured on these tiny models: up to 0.3 (fp16) and 1.3 (bf16).
TOLERANCE = {"half": 1.0, "bf16": 3.0}


class Tier:
    """One cache per dtype for the module; the float32 pictures of each batch kept as the reference."""

    def __init__(self, prepare=None) -> None:
        def load(request: LoadRequest, dtype: torch.dtype):
            loaded = load_pipeline(request, "cpu", dtype)
            if prepare is not None:
                prepare(loaded.pipeline)
            return loaded

        self.caches = {
            name: PipelineCache("cpu", 1 << 30, 0, lambda request, dtype=dtype: load(request, dtype))
            for name, dtype in DTYPES.items()
        }
        self.references: dict[str, list[np.ndarray]] = {}

    def compare(self, load: LoadRequest, batch: RunBatch, precision: str) -> float:
        """The largest mean difference, in levels of 255, of a picture in `precision` from float32's."""
        key = f"{load.name}: {batch.batch_id}"
        if key not in self.references:
            self.references[key] = self.run(load, batch, "full")
        drawn = self.run(load, batch, precision)
        for picture in drawn:
            assert picture.std() > 1  # a picture, not one flat (black) colour
        return max(np.abs(a - b).mean() for a, b in zip(self.references[key], drawn, strict=True))

    def run(self, load: LoadRequest, batch: RunBatch, precision: str) -> list[np.ndarray]:
        return run_on(self.caches[precision], batch)


def drawn_as_in_float32(tier: Tier, load: LoadRequest, path: str, precision: str, loras: Path) -> None:
    gap = tier.compare(load, tier_batch(load, path, loras), precision)
    assert gap <= TOLERANCE[precision], f"{gap:.2f} levels from float32's picture"
    if path == "LoRA":  # and the LoRA acts in this precision, more than the precision moves a picture
        plain = tier.run(load, tier_batch(load, "txt2img", loras), precision)
        with_lora = tier.run(load, tier_batch(load, "LoRA", loras), precision)
        assert np.abs(plain[0] - with_lora[0]).mean() > 2 * max(gap, 0.5)


@pytest.fixture(scope="module")
def sd_tier() -> Tier:
    return Tier(prepare=lambda pipe: overflowing(pipe.vae))


@pytest.mark.parametrize("precision", ["half", "bf16"])
@pytest.mark.parametrize("path", [path for path in PATHS if not path.startswith("edit")])  # SD has no edit model
def test_every_sd_path_in_half_precision_draws_float32s_picture(
    sd_tier: Tier, tiny_dir: Path, tiny_loras: Path, path: str, precision: str
) -> None:
    """With a VAE that overflows fp16 (as SDXL's): finite pictures on every path, close to float32's."""
    load = sd1_request(tiny_dir)
    drawn_as_in_float32(sd_tier, load, path, precision, tiny_loras)


@pytest.mark.parametrize("precision", ["half", "bf16"])
@pytest.mark.parametrize("path", ["txt2img", "inpaint, original"])  # its VAE both ways; SD1 takes every path
def test_sdxl_in_half_precision_with_its_real_vae_flags(
    sd_tier: Tier, tiny_dir: Path, tiny_loras: Path, path: str, precision: str
) -> None:
    path_of = tiny_dir / "tiny-sdxl.safetensors"
    ins = inspect_file(path_of)
    load = LoadRequest(str(path_of), "tiny-sdxl", "sdxl", "SDXL", ins.format, ins.pipeline_config, "epsilon")
    drawn_as_in_float32(sd_tier, load, path, precision, tiny_loras)


@pytest.fixture(scope="module")
def flow_tier() -> Tier:
    return Tier()


@pytest.fixture(scope="module")
def flow_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadRequest]:
    from gpu_worker.testing.quantise import quantise_file
    from gpu_worker.testing.tiny_flux import make_tiny_chroma, make_tiny_flux, make_tiny_flux_parts
    from gpu_worker.testing.tiny_flux2 import make_tiny_flux2
    from gpu_worker.testing.tiny_qwen_image import make_tiny_qwen_image
    from gpu_worker.testing.tiny_sd3 import make_tiny_sd3
    from gpu_worker.testing.tiny_z_image import make_tiny_z_image

    root = tmp_path_factory.mktemp("flow-tier")
    make_tiny_flux(root / "flux-dev.safetensors")
    make_tiny_sd3(root / "sd35-all-in-one.safetensors", "sd35-all-in-one")
    make_tiny_z_image(root / "z-image-aio.safetensors", shape="all-in-one")
    make_tiny_qwen_image(root / "qwen-image-aio.safetensors", shape="all-in-one")
    make_tiny_chroma(root / "chroma-aio.safetensors", shape="all-in-one")
    make_tiny_flux2(root / "klein-aio.safetensors", shape="all-in-one")
    # city96's GGUF Flux transformer (Q8_0), with its parts from the component store
    quantise_file(make_tiny_flux(root / ".flux-q8_0.safetensors", shape="transformer"), "gguf-q8_0", "flux", root / "flux-q8_0.gguf")
    parts = tuple(
        ComponentUse(role, path.name, str(path), role[0] * 64)
        for role, path in zip(("clip_l", "t5xxl", "vae"), make_tiny_flux_parts(root), strict=True)
    )
    requests = {}
    flow = (("flux", "flux-dev"), ("sd3", "sd35-all-in-one"), ("z-image", "z-image-aio"), ("qwen-image", "qwen-image-aio"), ("chroma", "chroma-aio"), ("flux2", "klein-aio"))
    for family, name in flow:
        ins = inspect_file(root / f"{name}.safetensors")
        requests[family] = LoadRequest(
            str(root / f"{name}.safetensors"), name, family, ins.architecture.label, "safetensors",
            ins.pipeline_config, "flow", name,
        )  # fmt: skip
    ins = inspect_file(root / "flux-q8_0.gguf")
    requests["flux-gguf"] = LoadRequest(
        str(root / "flux-q8_0.gguf"), "flux-q8_0", "flux", ins.architecture.label, "gguf", ins.pipeline_config, "flow", "flux-q8_0",
        components=parts,
    )  # fmt: skip
    return requests


@pytest.mark.parametrize("precision", ["half", "bf16"])
@pytest.mark.parametrize(
    ("family", "path"),
    [("flux", "txt2img"), ("flux", "img2img"), ("flux", "hires, Lanczos"), ("flux", "edit, two pictures"), ("flux", "ControlNet"), ("sd3", "txt2img"), ("sd3", "img2img"), ("z-image", "txt2img"), ("qwen-image", "txt2img"), ("chroma", "txt2img"), ("flux-gguf", "txt2img"), ("flux2", "txt2img"), ("flux2", "edit, two pictures")],
)
def test_flow_models_in_half_precision_draw_float32s_picture(
    flow_tier: Tier, flow_files: dict[str, LoadRequest], tiny_loras: Path, family: str, path: str, precision: str
) -> None:
    load = flow_files[family]
    drawn_as_in_float32(flow_tier, load, path, precision, tiny_loras)
    loaded, _ = flow_tier.caches[precision].get(load)  # the cached model is as it was loaded, for the next job
    assert {module.dtype for module in loaded.pipeline.components.values() if isinstance(module, torch.nn.Module)} == {DTYPES[precision]}


def test_out_of_memory_in_the_vae_is_recovered_and_the_next_job_on_the_model_works(
    sd_tier: Tier, tiny_dir: Path, tiny_loras: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the runner: the float32 decode of an overflowing VAE runs out of memory once; the
    batch is retried a picture at a time and done, and the cached model is still all fp16."""
    from diffusers import AutoencoderKL

    load = sd1_request(tiny_dir)
    real = AutoencoderKL.decode
    failures: list[torch.dtype] = []

    def decode_once_out_of_memory(self, *args, **kwargs):
        if self.dtype == torch.float32 and not failures:
            failures.append(self.dtype)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "decode", decode_once_out_of_memory)
    batch = tier_batch(load, "txt2img", tiny_loras, seeds=(7, 8))
    first = sd_tier.run(load, batch, "half")
    assert failures and all(picture.std() > 1 for picture in first)
    loaded, _ = sd_tier.caches["half"].get(load)
    modules = [c for c in loaded.pipeline.components.values() if isinstance(c, torch.nn.Module)]
    assert {p.dtype for module in modules for p in module.parameters()} == {torch.float16}
    again = sd_tier.run(load, batch, "half")
    # the same pictures (within fp16's rounding: the retry ran a picture at a time, with savers on)
    assert all(np.abs(a - b).mean() <= TOLERANCE["half"] for a, b in zip(first, again, strict=True))


def test_a_module_a_failed_call_left_upcast_is_put_back_before_the_retry(
    sd_tier: Tier, tiny_dir: Path, tiny_loras: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """diffusers' SDXL pipelines upcast their VAE and cast it back only after a decode that worked:
    whatever a call that ran out of memory left changed, the retry and every later job find the
    model as it was loaded."""
    from diffusers import StableDiffusionPipeline

    load = sd1_request(tiny_dir)
    real = StableDiffusionPipeline.__call__
    seen: list[torch.dtype] = []

    def upcast_then_out_of_memory(self, *args, **kwargs):
        seen.append(self.vae.dtype)
        if len(seen) == 1:
            self.vae.to(dtype=torch.float32)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", upcast_then_out_of_memory)
    sd_tier.run(load, tier_batch(load, "txt2img", tiny_loras, seeds=(7, 8)), "half")
    assert seen == [torch.float16] * 3  # the failed call, then each picture alone, all on the fp16 VAE
    loaded, _ = sd_tier.caches["half"].get(load)
    assert {p.dtype for p in loaded.pipeline.vae.parameters()} == {torch.float16}


def test_full_vae_precision_holds_every_vae_in_float32_beside_a_half_model(
    tiny_dir: Path, tiny_loras: Path, tmp_path: Path
) -> None:
    """EASEL_VAE_PRECISION=full (A1111's --no-half-vae): the UNet and text encoder in fp16, the
    checkpoint's VAE and a job's VAE file in float32; the pictures are float32's within fp16's rounding."""
    from gpu_worker.loader import build_pipeline, place, vae_dtype
    from gpu_worker.testing.tiny import make_tiny_vae

    load = sd1_request(tiny_dir)

    def build(request: LoadRequest):
        loaded = build_pipeline(request, "cpu", torch.float16, vae_dtype("full"))
        place(loaded, "cpu")
        return loaded

    cache = PipelineCache("cpu", 1 << 30, 0, build)
    reference = PipelineCache("cpu", 1 << 30, 0, lambda request: load_pipeline(request, "cpu", torch.float32))
    make_tiny_vae("sd1", tmp_path / "soft.safetensors", seed=5)
    soft = VaeUse("soft.safetensors", str(tmp_path / "soft.safetensors"), "5" * 64, "safetensors")
    for vae in (None, soft):
        batch = replace(tier_batch(load, "img2img", tiny_loras), vae=vae)
        drawn, expected = (run_on(c, batch) for c in (cache, reference))
        loaded, _ = cache.get(load)
        assert loaded.pipeline.unet.dtype == torch.float16 and loaded.pipeline.vae.dtype == torch.float32
        assert max(np.abs(a - b).mean() for a, b in zip(drawn, expected, strict=True)) <= TOLERANCE["half"]


def run_on(cache: PipelineCache, batch: RunBatch) -> list[np.ndarray]:
    events: list[object] = []
    BatchRunner("cpu", cache, events.append, lambda job_id: False).run(batch)
    done = [e for e in events if isinstance(e, JobDone)]
    assert done, [e.message for e in events if isinstance(e, BatchFailed)]
    return [np.asarray(Image.open(io.BytesIO(i.png)).convert("RGB"), dtype=np.float32) for i in done[0].images]


def test_a_picture_past_the_tiling_size_is_decoded_and_encoded_in_tiles(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past TILE_PIXELS a VAE call runs tiled (an untiled SDXL decode at 2048² needs ~15 GB), and the
    VAE is left untiled after it."""
    from diffusers import AutoencoderKL

    import gpu_worker.latents as gateway

    pipe = load_pipeline(sd1_request(tiny_dir), "cpu", dtype=torch.float32).pipeline
    vae = pipe.vae
    vae.tile_sample_min_size, vae.tile_latent_min_size = 32, 4  # tiles of the tiny size
    tiled: list[str] = []
    for name in ("tiled_decode", "_tiled_encode"):
        real = getattr(AutoencoderKL, name)
        monkeypatch.setattr(AutoencoderKL, name, lambda self, *a, _real=real, _name=name, **k: tiled.append(_name) or _real(self, *a, **k))
    latents = latents_for(pipe).float()
    decode(vae, latents)
    assert tiled == []  # 64 x 64: under the size
    monkeypatch.setattr(gateway, "TILE_PIXELS", 32 * 32)
    encode(vae, decode(vae, latents).clamp(-1, 1))
    assert tiled == ["tiled_decode", "_tiled_encode"] and not vae.use_tiling
