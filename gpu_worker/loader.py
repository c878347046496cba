"""Turn a registered checkpoint into a ready diffusers pipeline, with no network.

Single-file checkpoints load through `from_single_file` with a bundled diffusers-format config
folder (`configs/<id>`), which is what keeps diffusers from asking the hub for configs; diffusers
folders load with `from_pretrained(local_files_only=True)`. Anything else is refused by name.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers
import torch
import transformers
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
from transformers import CLIPTokenizer
from transformers.initialization import no_init_weights

from common.bundled import CONFIG_ROOT
from common.protocol import FLOW_FAMILIES, SUPPORTED_FAMILIES, LoadRequest, config_parts
from gpu_worker.flux_loader import flux_pipeline
from gpu_worker.model_parts import PartError
from gpu_worker.sd3_loader import sd3_pipeline

# Operators read our log lines; diffusers' per-load progress bars and cast notes are noise there.
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar, e.g. for LoRA text-encoder layers

PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


class CheckpointLoadError(Exception):
    """The checkpoint cannot be loaded; the message says why in one line, for the user."""


@dataclass
class LoadedPipeline:
    pipeline: DiffusionPipeline
    request: LoadRequest
    device: str
    dtype: torch.dtype
    load_seconds: float
    # The checkpoint's own scheduler config: every job's sampler is built from this, never from
    # the previous job's scheduler, so one job's sampler options cannot leak into the next.
    base_scheduler_config: dict = field(default_factory=dict)
    # LoRA adapters injected into this pipeline (gpu_worker/loras.py), least recently used first.
    adapters: list[str] = field(default_factory=list)
    # The same modules as image-to-image and inpainting pipelines, made when first needed.
    derived: dict[str, DiffusionPipeline] = field(default_factory=dict)
    own_vae: object | None = None  # the checkpoint's own VAE, while a job's VAE (gpu_worker/vaes.py) stands in
    # Larger than the device's budget: kept in CPU RAM, each part moved to the device while it runs
    # (diffusers' model CPU offload) rather than failing.
    offloaded: bool = False


def image_to_image(loaded: LoadedPipeline) -> DiffusionPipeline:
    """The loaded pipeline's modules (LoRA layers and all) as an img2img pipeline."""
    return _derived(loaded, "img2img", AutoPipelineForImage2Image)


def inpainting(loaded: LoadedPipeline) -> DiffusionPipeline:
    """The loaded pipeline's modules as an inpainting pipeline (a 4-channel UNet: the masked latents
    are redrawn and the rest kept from the picture at every step, as A1111 does on normal models)."""
    return _derived(loaded, "inpaint", AutoPipelineForInpainting)


def _derived(loaded: LoadedPipeline, kind: str, factory) -> DiffusionPipeline:
    """Made once, nothing copied (diffusers `from_pipe`); it takes this batch's scheduler."""
    if kind not in loaded.derived:
        loaded.derived[kind] = factory.from_pipe(loaded.pipeline)
        loaded.derived[kind].set_progress_bar_config(disable=True)
    loaded.derived[kind].scheduler = loaded.pipeline.scheduler
    return loaded.derived[kind]


def default_dtype(device: str, family: str = "sd1") -> torch.dtype:
    """fp16 on a GPU; Flux and SD3 in bf16, as BFL, SAI and ComfyUI run them (T5 overflows fp16)."""
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if family in FLOW_FAMILIES else torch.float16


def load_pipeline(
    request: LoadRequest, device: str = "cpu", dtype: torch.dtype | None = None, budget: int | None = None
) -> LoadedPipeline:
    dtype = dtype or default_dtype(device, request.family)
    path = Path(request.path)
    if request.family not in SUPPORTED_FAMILIES:
        raise CheckpointLoadError(f"{request.name}: {request.architecture} checkpoints cannot be run by Easel")
    if not path.exists():
        raise CheckpointLoadError(f"{request.name}: the file {path} is missing from disk")
    started = time.perf_counter()
    try:
        if request.family == "flux":
            pipeline = flux_pipeline(request, dtype, CONFIG_ROOT, device)
        elif request.family == "sd3":
            pipeline = sd3_pipeline(request, dtype, CONFIG_ROOT, device)
        elif request.format == "diffusers":
            pipeline = _load_folder(path, dtype)
        else:
            pipeline = _load_single_file(path, request, dtype)
    except CheckpointLoadError:
        raise
    except PartError as e:
        raise CheckpointLoadError(str(e)) from None
    except Exception as e:  # diffusers reports layout problems with many exception types
        raise CheckpointLoadError(f"{request.name}: could not build a pipeline: {type(e).__name__}: {e}") from e
    if request.family not in FLOW_FAMILIES:
        _set_prediction_type(pipeline, request.prediction, request.zero_snr)
    pipeline.set_progress_bar_config(disable=True)
    offloaded = False
    if device != "cpu":  # it was built on the CPU; walking every module to stay there costs 0.15 s
        size = sum(p.numel() * p.element_size() for m in pipeline.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters())
        offloaded = budget is not None and size > budget
        if offloaded:  # too big for the device: each part goes there while it runs (FLUX.1 on a 16 GB card)
            pipeline.enable_model_cpu_offload(device=device)
        else:
            pipeline.to(device)
    loaded = LoadedPipeline(
        pipeline, request, device, dtype, time.perf_counter() - started, dict(pipeline.scheduler.config)
    )
    loaded.offloaded = offloaded
    return loaded


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
_INPAINTING = {"StableDiffusionPipeline": "StableDiffusionInpaintPipeline", "StableDiffusionXLPipeline": "StableDiffusionXLInpaintPipeline"}


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
EDM_LATENTS = {"scaling_factor": 0.5, "latents_mean": [-1.6574, 1.886, -1.383, 2.5155], "latents_std": [8.4927, 5.9022, 6.5498, 5.2299]}


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


def _set_prediction_type(pipeline: DiffusionPipeline, prediction: str, zero_snr: bool = False) -> None:
    """The checkpoint's own sampling schedule. A zero-terminal-SNR model gets its betas rescaled so
    that the last step is pure noise (Lin et al. 2023, algorithm 1; ComfyUI's `zsnr`), and the
    steps then start from that last timestep ("trailing"), as ComfyUI's schedules start from sigma_max."""
    wanted: dict[str, object] = {"prediction_type": "v_prediction" if prediction == "v" else "epsilon"}
    if zero_snr:
        wanted |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    if any(pipeline.scheduler.config.get(key) != value for key, value in wanted.items()):
        pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config, **wanted)
