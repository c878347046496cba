"""SD1, SD2 and SDXL pipelines from the files people have, with no network.

Single-file checkpoints load through `from_single_file` with a bundled diffusers-format config
folder (`configs/<id>`), which is what keeps diffusers from asking the hub for configs; diffusers
folders load with `from_pretrained(local_files_only=True)`. Anything else is refused by name.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline
from transformers import CLIPTokenizer
from transformers.initialization import no_init_weights

from common.bundled import CONFIG_ROOT
from common.protocol import LoadRequest, config_parts
from gpu_worker.loaded import CheckpointLoadError

PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def build_sd(request: LoadRequest, dtype: torch.dtype) -> DiffusionPipeline:
    """The checkpoint's pipeline on the CPU, with its prediction type and schedule."""
    path = Path(request.path)
    pipeline = _load_folder(path, dtype) if request.format == "diffusers" else _load_single_file(path, request, dtype)
    _set_prediction_type(pipeline, request.prediction, request.zero_snr)
    return pipeline


def _load_single_file(path: Path, request: LoadRequest, dtype: torch.dtype) -> DiffusionPipeline:
    if not request.pipeline_config:
        raise CheckpointLoadError(f"{request.name}: no bundled configuration fits this {request.architecture} file")
    base, variant = config_parts(request.pipeline_config)
    folder = CONFIG_ROOT / base
    index = folder / "model_index.json"
    if not index.is_file() or variant not in ("", "inpainting", "edm"):
        raise CheckpointLoadError(f"{request.name}: unknown pipeline configuration {request.pipeline_config!r}")
    tokenizers = {sub.name: _tokenizer(str(sub)) for sub in folder.glob("tokenizer*")}
    # Every weight comes from the file: random initialisation of the text encoders first is waste
    # (a third of the load time for SD1.5 on a CPU).
    with (
        no_init_weights(),
        named_for_diffusers(path, request.format) as readable,
        _config_folder(folder, variant) as config,
    ):
        pipeline_cls = getattr(diffusers, json.loads((config / "model_index.json").read_text())["_class_name"])
        return pipeline_cls.from_single_file(
            str(readable), config=str(config), torch_dtype=dtype, local_files_only=True, **tokenizers
        )


# An inpainting checkpoint's pipeline: its base's, whose UNet takes 9 channels (latents, mask, masked picture).
_INPAINTING = {
    "StableDiffusionPipeline": "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLInpaintPipeline",
}


# Playground v2.5 (an EDM model on an SDXL UNet), as diffusers' release of it and ComfyUI's
# SDXL_Playground_2_5 latent format describe it: an EDM schedule, and latents centred and scaled.
EDM_SCHEDULER = {
    "_class_name": "EDMDPMSolverMultistepScheduler",
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "sigma_data": 0.5,
    "sigma_schedule": "karras",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "rho": 7.0,
    "solver_order": 2,
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "lower_order_final": True,
    "final_sigmas_type": "zero",
}
EDM_LATENTS = {
    "scaling_factor": 0.5,
    "latents_mean": [-1.6574, 1.886, -1.383, 2.5155],
    "latents_std": [8.4927, 5.9022, 6.5498, 5.2299],
}


@contextmanager
def _config_folder(folder: Path, variant: str) -> Iterator[Path]:
    """The bundled folder itself, or for a variant a private copy of it (links, and the few small
    JSON files it changes): an inpainting checkpoint gets the inpainting pipeline class and a
    9-channel UNet; an EDM one its scheduler and latent statistics."""
    if not variant:
        yield folder
        return
    changed = {"inpainting": {"model_index.json", "unet"}, "edm": {"model_index.json", "scheduler", "vae"}}[variant]
    with tempfile.TemporaryDirectory(prefix="easel-config-") as temp:
        copy = Path(temp)
        for part in folder.iterdir():
            if part.name not in changed:
                (copy / part.name).symlink_to(part.resolve())

        def write(name: str, values: dict) -> None:
            original = json.loads((folder / name).read_text())
            (copy / name).parent.mkdir(exist_ok=True)
            (copy / name).write_text(json.dumps(original | values))

        if variant == "edm":
            write("model_index.json", {"scheduler": ["diffusers", EDM_SCHEDULER["_class_name"]]})
            (copy / "scheduler").mkdir()
            (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(EDM_SCHEDULER))
            write("vae/config.json", EDM_LATENTS)
        else:
            index = json.loads((folder / "model_index.json").read_text())
            if index["_class_name"] not in _INPAINTING:
                raise CheckpointLoadError(f"no inpainting pipeline for {index['_class_name']}")
            write("model_index.json", {"_class_name": _INPAINTING[index["_class_name"]]})
            write("unet/config.json", {"in_channels": 9})
        yield copy


@contextmanager
def named_for_diffusers(path: Path, fmt: str) -> Iterator[Path]:
    """`path` under a name diffusers reads by the format we found in its content.

    diffusers picks its reader by the exact, lower-case suffix (model_loading_utils.load_state_dict:
    ".safetensors" or else torch.load), so `X.SAFETENSORS` or `x.sft` would go to torch.load and
    fail. A link with the canonical suffix, in a private folder, hands it what it needs.
    """
    suffix = ".safetensors" if fmt == "safetensors" else ".ckpt"
    if path.name.endswith(suffix):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="easel-load-") as folder:
        link = Path(folder) / f"checkpoint{suffix}"
        link.symlink_to(path.resolve())
        yield link


@cache
def _tokenizer(folder: str) -> CLIPTokenizer:
    """Tokenizers depend only on the config folder; building CLIP's BPE tables takes 0.2 s, so once."""
    return CLIPTokenizer.from_pretrained(folder)


def _load_folder(path: Path, dtype: torch.dtype) -> DiffusionPipeline:
    index = path / "model_index.json"
    if not index.is_file():
        raise CheckpointLoadError(f"{path} is not a diffusers folder (no model_index.json)")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name not in PIPELINE_CLASSES:
        raise CheckpointLoadError(f"{path}: {class_name} pipelines are not supported")
    return DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)


def _schedule_settings(prediction: str, zero_snr: bool) -> dict[str, object]:
    """The checkpoint's own sampling schedule. A zero-terminal-SNR model gets its betas rescaled so
    that the last step is pure noise (Lin et al. 2023, algorithm 1; ComfyUI's `zsnr`), and the
    steps then start from that last timestep ("trailing"), as ComfyUI's schedules start from sigma_max."""
    wanted: dict[str, object] = {"prediction_type": "v_prediction" if prediction == "v" else "epsilon"}
    if zero_snr:
        wanted |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    return wanted


def scheduler_config(request: LoadRequest) -> dict:
    """The scheduler config a checkpoint loads with, from its configuration alone (no weights read):
    what `python bot.py sampler explain` computes its noise levels from."""
    base, variant = config_parts(request.pipeline_config)
    if variant == "edm":
        return dict(EDM_SCHEDULER)
    folder = Path(request.path) if request.format == "diffusers" else CONFIG_ROOT / base
    config_file = folder / "scheduler" / "scheduler_config.json"
    if (request.format != "diffusers" and not base) or not config_file.is_file():
        raise CheckpointLoadError(f"{request.name}: no scheduler configuration for this {request.architecture} file")
    return json.loads(config_file.read_text()) | _schedule_settings(request.prediction, request.zero_snr)


def _set_prediction_type(pipeline: DiffusionPipeline, prediction: str, zero_snr: bool = False) -> None:
    wanted = _schedule_settings(prediction, zero_snr)
    if any(pipeline.scheduler.config.get(key) != value for key, value in wanted.items()):
        pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config, **wanted)
