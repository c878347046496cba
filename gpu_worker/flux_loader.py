"""Flux.1 checkpoints as a diffusers FluxPipeline, from the files people have, with no network.

Two shapes of file (what ComfyUI and Forge users download):
- all-in-one: the transformer under `model.diffusion_model.`, CLIP-L under
  `text_encoders.clip_l.transformer.`, T5-XXL under `text_encoders.t5xxl.transformer.` and the VAE
  under `vae.` (ComfyUI's checkpoint saver; Comfy-Org's flux1-dev-fp8.safetensors);
- transformer only, in BFL's own layout (flux1-dev.safetensors), with CLIP-L, T5-XXL and the VAE
  (ae.safetensors) as separate files from the component store (LoadRequest.components).

Tensors are read one by one from the safetensors file (never the whole file at once, nor through
pickle) and cast to the compute dtype, which upcasts fp8 (e4m3fn / e5m2) weights as ComfyUI does when
it computes in bf16. Configs and tokenizers come from the bundled `configs/flux` (or `tiny-flux`)
folder; the transformer's depth and widths from the file itself (gpu_worker/flux_layout.py).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast
from transformers.initialization import no_init_weights

from gpu_worker.flux_layout import to_diffusers, transformer_config
from gpu_worker.protocol import ComponentUse, LoadRequest, config_parts

TRANSFORMER_PREFIX = "model.diffusion_model."
# Where each part sits in an all-in-one file, and the prefixes a separate file of it may carry.
PART_PREFIXES = {
    "clip_l": ("text_encoders.clip_l.transformer.", "text_encoders.clip_l.", "cond_stage_model.transformer.", "transformer."),
    "t5xxl": ("text_encoders.t5xxl.transformer.", "text_encoders.t5xxl.", "transformer."),
    "vae": ("vae.", "first_stage_model."),
}
ROLE_LABELS = {"clip_l": "CLIP-L text encoder", "t5xxl": "T5-XXL text encoder", "vae": "Flux VAE (16 channels)"}
# Keys that real files carry and the models do not take (CLIP's projection and logit scale in
# ComfyUI's clip_l.safetensors; the position ids buffer in older exports).
_SKIPPED_SUFFIXES = ("position_ids", "logit_scale", "text_projection.weight")


# Parts from the component store, shared by every pipeline that uses them: a second transformer-only
# checkpoint with the same T5-XXL (9.5 GB in bf16) takes the one already loaded. Held weakly: a part
# lives as long as a cached pipeline uses it (gpu_worker/cache.py counts it once).
_SHARED: weakref.WeakValueDictionary[tuple[str, str, str, str], torch.nn.Module] = weakref.WeakValueDictionary()


class FluxLoadError(Exception):
    """A Flux file or component cannot be used; the message says which and why, for the user."""


class TensorFile:
    """One safetensors file, read a tensor at a time, cast to `dtype` as it is read."""

    def __init__(self, path: Path, dtype: torch.dtype) -> None:
        self.path = path
        self.dtype = dtype
        self._file = safe_open(str(path), framework="pt", device="cpu")
        self.keys = list(self._file.keys())

    def shapes(self, prefix: str = "") -> dict[str, tuple[int, ...]]:
        return {k[len(prefix) :]: tuple(self._file.get_slice(k).get_shape()) for k in self.keys if k.startswith(prefix)}

    def tensors(self, prefix: str = "", keep: Callable[[str], bool] = lambda _: True) -> dict[str, torch.Tensor]:
        out = {}
        for key in self.keys:
            if key.startswith(prefix) and keep(key[len(prefix) :]):
                tensor = self._file.get_tensor(key)
                out[key[len(prefix) :]] = tensor.to(self.dtype) if tensor.is_floating_point() else tensor
        return out


def flux_pipeline(request: LoadRequest, dtype: torch.dtype, config_root: Path, device: str = "cpu") -> FluxPipeline:
    """The pipeline for a Flux checkpoint `request`; FluxLoadError says what is wrong or missing.
    A part from the component store already loaded on `device` (for another checkpoint) is shared."""
    base, _ = config_parts(request.pipeline_config)
    folder = config_root / base
    if not (folder / "transformer" / "config.json").is_file():
        raise FluxLoadError(f"{request.name}: unknown pipeline configuration {request.pipeline_config!r}")
    main = TensorFile(Path(request.path), dtype)
    given = {use.role: use for use in request.components}
    builders = {"clip_l": _clip, "t5xxl": _t5, "vae": _vae}

    def part(role: str) -> torch.nn.Module:
        use = given.get(role)
        key = (role, use.sha256, str(dtype), base) if use is not None else None
        shared = _SHARED.get(key) if key is not None else None
        if shared is not None and next(shared.parameters()).device == torch.device(device):
            return shared
        module = builders[role](_part(main, role, given, dtype), folder, dtype)
        if key is not None:
            _SHARED[key] = module
        return module

    with no_init_weights():
        transformer = _transformer(main, folder, dtype)
        clip, t5, vae = part("clip_l"), part("t5xxl"), part("vae")
    _check_widths(request.name, transformer, clip, t5, vae)
    schnell = not transformer.config.guidance_embeds
    return FluxPipeline(
        scheduler=flow_scheduler(folder, schnell),
        vae=vae,
        text_encoder=clip,
        tokenizer=_clip_tokenizer(str(folder / "tokenizer")),
        text_encoder_2=t5,
        tokenizer_2=_t5_tokenizer(str(folder / "tokenizer_2")),
        transformer=transformer,
    )


@cache
def _clip_tokenizer(folder: str) -> CLIPTokenizer:
    """Tokenizers depend only on their folder and are read-only: built once (0.1-0.2 s each)."""
    return CLIPTokenizer.from_pretrained(folder)


@cache
def _t5_tokenizer(folder: str) -> T5TokenizerFast:
    return T5TokenizerFast.from_pretrained(folder)


def flow_scheduler(folder: Path, schnell: bool) -> FlowMatchEulerDiscreteScheduler:
    """Flux dev's flow-matching schedule (shift by image size); schnell's is unshifted, as BFL's
    flux/sampling.py `get_schedule(shift=False)` for it and diffusers' FLUX.1-schnell config have it."""
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    if schnell:
        config |= {"use_dynamic_shifting": False, "shift": 1.0}
    return FlowMatchEulerDiscreteScheduler.from_config(config)


def _config(folder: Path, part: str) -> dict:
    return json.loads((folder / part / "config.json").read_text())


def _transformer(main: TensorFile, folder: Path, dtype: torch.dtype) -> FluxTransformer2DModel:
    prefix = TRANSFORMER_PREFIX if any(k.startswith(TRANSFORMER_PREFIX) for k in main.keys) else ""
    if prefix:
        state = main.tensors(prefix)
    else:  # a transformer-only file: every tensor is the transformer's
        state = main.tensors()
    try:
        config = transformer_config({k: tuple(v.shape) for k, v in state.items()}, _config(folder, "transformer"))
        converted = to_diffusers(state)
    except (KeyError, ValueError) as e:
        raise FluxLoadError(f"{main.path.name} is not a Flux transformer this can read: {e}") from None
    with torch.device("meta"):  # every tensor comes from the file: no random initialisation first
        model = FluxTransformer2DModel.from_config(config)
    _load(model, converted, f"{main.path.name} (transformer)")
    return model


def _part(main: TensorFile, role: str, given: dict[str, ComponentUse], dtype: torch.dtype) -> tuple[str, dict[str, torch.Tensor]]:
    """(where from, tensors without prefix) of one part: the component named for it, else the file's own."""
    if role in given:
        use = given[role]
        if not Path(use.path).is_file():
            raise FluxLoadError(f"the {ROLE_LABELS[role]} {use.name} is no longer on disk")
        source = TensorFile(Path(use.path), dtype)
        prefix = next((p for p in PART_PREFIXES[role] if any(k.startswith(p) for k in source.keys)), "")
        return use.name, source.tensors(prefix, _wanted)
    prefix = PART_PREFIXES[role][0]
    if not any(k.startswith(prefix) for k in main.keys):
        raise FluxLoadError(f"{main.path.name} has no {ROLE_LABELS[role]} and none was given")
    return f"{main.path.name} ({role})", main.tensors(prefix, _wanted)


def _wanted(key: str) -> bool:
    return not key.endswith(_SKIPPED_SUFFIXES)


def _clip(part: tuple[str, dict[str, torch.Tensor]], folder: Path, dtype: torch.dtype) -> CLIPTextModel:
    where, state = part
    model = CLIPTextModel(CLIPTextConfig(**_config(folder, "text_encoder"))).to(dtype)
    # Files name CLIP's tensors `text_model.…` (the Hugging Face layout); the model may list them without it.
    own = "text_model." if next(iter(model.state_dict())).startswith("text_model.") else ""
    state = {own + k.removeprefix("text_model."): v for k, v in state.items()}
    _load(model, state, where)
    return model


def _t5(part: tuple[str, dict[str, torch.Tensor]], folder: Path, dtype: torch.dtype) -> T5EncoderModel:
    where, state = part
    # The token embedding is stored once, as `shared` (or only as the encoder's): both names take it.
    embedding = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    if embedding is not None:
        state.setdefault("shared.weight", embedding)
        state.setdefault("encoder.embed_tokens.weight", embedding)
    model = T5EncoderModel(T5Config(**_config(folder, "text_encoder_2"))).to(dtype)
    _load(model, state, where)
    return model


def _vae(part: tuple[str, dict[str, torch.Tensor]], folder: Path, dtype: torch.dtype) -> AutoencoderKL:
    where, state = part
    config = _config(folder, "vae")
    if not any(".up_blocks." in k for k in state):  # the original (LDM) layout, as ae.safetensors
        state = convert_ldm_vae_checkpoint(state, config)
    with torch.device("meta"):
        model = AutoencoderKL.from_config(config)
    _load(model, state, where)
    return model


def _load(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Every parameter from the file, or a one-line refusal: a missing, extra or misshapen tensor
    means the file is not what its names say. (Models built on the meta device have no buffers
    outside their state dict, so the file's tensors are all of them.)"""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected.keys() & state.keys() if tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        detail = (
            f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing
            else f"{len(extra)} unexpected tensors (e.g. {extra[0]})" if extra
            else f"{wrong[0]} is {list(state[wrong[0]].shape)}, not {list(expected[wrong[0]].shape)}"
        )
        raise FluxLoadError(f"{where} does not fit {type(model).__name__}: {detail}")
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)


def _check_widths(name: str, transformer, clip, t5, vae) -> None:
    """The parts must fit together; a T5 or CLIP from another model size is refused by name."""
    config = transformer.config
    checks = (
        ("T5-XXL text encoder", t5.config.d_model, config.joint_attention_dim),
        ("CLIP-L text encoder", clip.config.hidden_size, config.pooled_projection_dim),
        ("VAE", vae.config.latent_channels * 4, config.in_channels),
    )
    for label, has, needs in checks:
        if has != needs:
            raise FluxLoadError(f"{name}: its {label} is {has} wide where the transformer needs {needs}")
