"""The worker's loader builds pipelines offline from single files and diffusers folders, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bot.checkpoints.inspection import inspect_file
from common.bundled import CONFIG_ROOT, QWEN3_TOKENIZER
from common.protocol import LoadRequest
from gpu_worker.loaded import CheckpointLoadError
from gpu_worker.loader import load_pipeline
from gpu_worker.testing.tiny import make_tiny_checkpoint, tiny_components


def request_for(path: Path, name: str = "test") -> LoadRequest:
    ins = inspect_file(path)
    return LoadRequest(
        path=str(path),
        name=name,
        family=ins.architecture.family,
        architecture=ins.architecture.label,
        format=ins.format,
        pipeline_config=ins.pipeline_config,
        prediction=ins.architecture.prediction,
    )


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_single_file_loads_every_parameter_exactly(tmp_path: Path, arch: str) -> None:
    path = make_tiny_checkpoint(arch, tmp_path / f"{arch}.safetensors", seed=3)
    source = tiny_components(arch, seed=3)
    loaded = load_pipeline(request_for(path)).pipeline
    for component, module in source.items():
        expected = module.state_dict()
        actual = getattr(loaded, component).state_dict()
        missing = [k for k in expected if k not in actual]
        assert not missing, f"{component}: {missing[:3]}"
        for key, value in expected.items():
            assert actual[key].device.type != "meta", f"{component}.{key} left on meta"
            assert torch.equal(actual[key], value), f"{component}.{key} differs"
    expected_prediction = "v_prediction" if arch == "sd2" else "epsilon"
    assert loaded.scheduler.config.prediction_type == expected_prediction


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_generates_a_64px_image_deterministically(tiny_dir: Path, arch: str) -> None:
    pipe = load_pipeline(request_for(tiny_dir / f"tiny-{arch}.safetensors")).pipeline

    def run() -> torch.Tensor:
        out = pipe(
            prompt="a lighthouse at dusk",
            num_inference_steps=3,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(42),
            output_type="pt",
        )
        return out.images[0]

    first, second = run(), run()
    assert first.shape == (3, 64, 64)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


def test_ckpt_loads_through_the_same_path(tmp_path: Path) -> None:
    from gpu_worker.testing.tiny import tiny_state_dict

    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": tiny_state_dict("sd1", seed=5), "global_step": 1}, path)
    loaded = load_pipeline(request_for(path)).pipeline
    assert torch.equal(loaded.unet.conv_in.weight, tiny_components("sd1", seed=5)["unet"].conv_in.weight)


def test_diffusers_folder(tmp_path: Path, tiny_dir: Path) -> None:
    pipe = load_pipeline(request_for(tiny_dir / "tiny-sd1.safetensors")).pipeline
    folder = tmp_path / "diffusers-model"
    pipe.save_pretrained(folder)
    req = LoadRequest(str(folder), "folder", "sd1", "SD1.x", "diffusers", None)
    again = load_pipeline(req).pipeline
    assert torch.equal(again.unet.conv_in.weight, pipe.unet.conv_in.weight)


@pytest.mark.parametrize(
    "request_,message",
    [
        (
            LoadRequest("/x.safetensors", "cascade", "stable-cascade", "Stable Cascade", "safetensors", None),
            "cascade: Stable Cascade checkpoints cannot be run",
        ),
        (
            LoadRequest("/x.safetensors", "ref", "sdxl-refiner", "SDXL refiner", "safetensors", None),
            "SDXL refiner checkpoints",
        ),
        (
            LoadRequest("/nope.safetensors", "gone", "sd1", "SD1.x", "safetensors", "sd1"),
            "gone: the file /nope.safetensors is missing",
        ),
    ],
)
def test_refusals_name_the_problem(request_: LoadRequest, message: str) -> None:
    with pytest.raises(CheckpointLoadError, match=message):
        load_pipeline(request_)


def test_unknown_config_and_no_config(tiny_dir: Path) -> None:
    path = str(tiny_dir / "tiny-sd1.safetensors")
    with pytest.raises(CheckpointLoadError, match="unknown pipeline configuration 'sd9'"):
        load_pipeline(LoadRequest(path, "t", "sd1", "SD1.x", "safetensors", "sd9"))
    with pytest.raises(CheckpointLoadError, match="no bundled configuration"):
        load_pipeline(LoadRequest(path, "t", "sd1", "SD1.x", "safetensors", None))


def test_wrong_config_is_a_clear_error(tiny_dir: Path) -> None:
    path = str(tiny_dir / "tiny-sd1.safetensors")
    with pytest.raises(CheckpointLoadError, match="could not build a pipeline"):
        load_pipeline(LoadRequest(path, "t", "sdxl", "SDXL base", "safetensors", "tiny-sdxl"))


def test_every_chosen_config_is_bundled() -> None:
    from bot.checkpoints.pipeline_config import CONFIGS

    for config in CONFIGS.values():
        folder = CONFIG_ROOT / config
        assert (folder / "model_index.json").is_file(), config
        transformer = any(name in config for name in ("flux", "sd3", "z-image", "qwen-image"))
        denoiser = "transformer" if transformer else "unet"
        for sub in (denoiser, "vae", "text_encoder"):
            assert (folder / sub / "config.json").is_file(), (config, sub)
        # Z-Image's, Qwen-Image's and FLUX.2 [klein]'s Qwen tokenizer comes from an installed package (common/bundled.py)
        qwen = any(name in config for name in ("z-image", "qwen-image", "flux2"))
        tokenizer = QWEN3_TOKENIZER if qwen else folder / "tokenizer"
        assert (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()
        for tok in folder.glob("tokenizer_*"):  # SDXL's and SD3's second CLIP; Flux's and SD3's T5
            t5 = (tok / "tokenizer.json").is_file()
            files = ("tokenizer.json",) if t5 else ("vocab.json", "merges.txt")
            assert all((tok / name).is_file() for name in files), tok
            assert t5 == (tok.name == "tokenizer_3" or "flux" in config), tok


@pytest.mark.parametrize(
    "config,unet,vae,text",
    [
        ("sd1", 859_520_964, 83_653_863, 123_060_480),
        ("sd2", 865_910_724, 83_653_863, 340_387_840),
        ("sdxl", 2_567_463_684, 83_653_863, 123_060_480),
    ],
)
def test_real_configs_describe_the_real_models(config: str, unet: int, vae: int, text: int) -> None:
    """Parameter counts of the published SD1.5 / SD2.1 / SDXL components (built on the meta device)."""
    import json

    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = CONFIG_ROOT / config

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    with init_empty_weights():
        assert count(UNet2DConditionModel.from_config(json.loads((folder / "unet/config.json").read_text()))) == unet
        assert count(AutoencoderKL.from_config(json.loads((folder / "vae/config.json").read_text()))) == vae
        te = CLIPTextModel(CLIPTextConfig(**json.loads((folder / "text_encoder/config.json").read_text())))
        assert count(te) == text
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    ids = tokenizer("a photo of an astronaut riding a horse").input_ids
    # The published CLIP tokenizer's ids for this prompt.
    assert ids == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert tokenizer.model_max_length == 77


@pytest.mark.parametrize("name", ["UPPER.SAFETENSORS", "short.sft", "really-safetensors.ckpt"])
def test_a_file_is_loaded_for_what_it_holds_whatever_its_name(tmp_path: Path, tiny_dir: Path, name: str) -> None:
    """diffusers picks its reader by the exact suffix; the loader hands it a canonically named link."""
    import shutil

    path = tmp_path / name
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", path)
    request = request_for(path)
    assert request.format == "safetensors"
    loaded = load_pipeline(request).pipeline
    reference = load_pipeline(request_for(tiny_dir / "tiny-sd1.safetensors")).pipeline
    for key, value in reference.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value), key
