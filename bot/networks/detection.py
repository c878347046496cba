"""What kind of adapter a file holds and which base model it was trained for, from its header alone.

Followed (facts, not code):
- AUTOMATIC1111 extensions-builtin/Lora/network.py `NetworkOnDisk.detect_version`: the kohya
  metadata `ss_base_model_version` ("sdxl_…" = SDXL) and `ss_v2` ("True" = SD2) decide first.
- kohya-ss/sd-scripts (networks/lora.py): keys `lora_unet_…`, `lora_te_…` (SD1/SD2), `lora_te1_…` /
  `lora_te2_…` (SDXL's two text encoders), each module with `.lora_down.weight`, `.lora_up.weight`
  and `.alpha`; LyCORIS LoHa `hada_w1_a…`, LoKr `lokr_w1…`.
- diffusers / PEFT layout (huggingface/diffusers loaders/lora_pipeline.py): `unet.….lora_A.weight`,
  `text_encoder.…`, or the older `….lora.down.weight`.
- Without metadata, the width of a cross-attention key projection tells the base as it does for
  checkpoints: 768 = SD1 (CLIP-L), 1024 = SD2 (OpenCLIP-H), 2048 = SDXL (CLIP-L + bigG).
- The 2026 transformers' LoRAs (ai-toolkit, musubi-tuner, DiffSynth; with ComfyUI's `diffusion_model.`,
  diffusers' `transformer.` or kohya's `lora_unet_` names) tell their base by their modules, as
  diffusers' converters read them (loaders/lora_conversion_utils.py): Qwen-Image's blocks keep a
  picture and a text stream (`img_mlp`, `txt_mlp`, `img_mod`, `txt_mod`), Z-Image's are `layers.N.
  attention` / `feed_forward` with its `noise_refiner` and `context_refiner`. Chroma's are Flux's
  modules: a Chroma LoRA is told only by its metadata naming Chroma. FLUX.2's in diffusers' names
  have modules of their own (`to_qkv_mlp_proj`, `ff.linear_in`); in BFL's they are FLUX.1's, and the
  width of a single block's fused input projection tells them (7 widths for FLUX.1, 9 for FLUX.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.families import FAMILIES
from common.tensors import TensorInfo

BASE_LABELS = {**{name: family.short_label for name, family in FAMILIES.items()}, "": "unknown base"}
_CROSS_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
# modelspec.architecture prefixes (Stability's model spec), e.g. "stable-diffusion-xl-v1-base/lora".
_MODELSPEC_BASE = (
    ("flux-2", "flux2"),  # before FLUX.1's "flux"
    ("flux.2", "flux2"),
    ("flux2", "flux2"),
    ("stable-diffusion-xl", "sdxl"),
    ("stable-diffusion-v2", "sd2"),
    ("stable-diffusion-v1", "sd1"),
    ("flux", "flux"),
    ("stable-diffusion-3", "sd3"),
)
# The transformers after SD3, as modelspec and kohya-style trainers (`ss_base_model_version`) name them.
_TRANSFORMER_BASE = (
    ("chroma", "chroma"),
    ("qwen-image", "qwen-image"),
    ("qwen_image", "qwen-image"),
    ("z-image", "z-image"),
    ("z_image", "z-image"),
    ("zimage", "z-image"),
)
# FLUX.2's own modules in diffusers' names (its shared modulations, fused single-block projection,
# gated feed-forward); in BFL's names its blocks are FLUX.1's, told apart by width (_flux_generation).
_FLUX2_MODULES = ("to_qkv_mlp_proj", "double_stream_modulation", "single_stream_modulation", "ff.linear_in", "ff_linear_in", "ff_context.linear_in")
# Flux's blocks under any prefix (ComfyUI's `diffusion_model.double_blocks.…`, kohya's
# `lora_unet_double_blocks_…`, diffusers' `transformer.single_transformer_blocks.…`).
_FLUX_MODULES = ("double_blocks", "single_blocks", "single_transformer_blocks")
# Module names that only one transformer family's LoRA targets (any prefix, dots or kohya's underscores).
_QWEN_IMAGE_MODULES = ("img_mlp", "txt_mlp", "img_mod", "txt_mod")
_Z_IMAGE_MODULES = ("attention.to_q", "attention_to_q", "attention.qkv", "attention_qkv", "feed_forward", "noise_refiner", "context_refiner")


@dataclass(frozen=True)
class AdapterKind:
    kind: str  # lora | locon | loha | lokr
    layout: str  # kohya | peft
    base: str  # a family of common/families.py (sd1, sdxl, flux, z-image, …) or "" (unknown)
    decided_by: str  # the metadata field or key behind `base`
    loadable: bool
    reason: str = ""  # why it cannot be applied

    @property
    def label(self) -> str:
        kind = {"lora": "LoRA", "locon": "LoCon (LyCORIS)", "loha": "LoHa (LyCORIS)", "lokr": "LoKr (LyCORIS)"}
        return f"{kind[self.kind]} for {BASE_LABELS.get(self.base, self.base)}"

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "layout": self.layout,
            "base": self.base,
            "decided_by": self.decided_by,
            "loadable": self.loadable,
            "reason": self.reason,
            "label": self.label,
        }


def is_adapter(keys: object) -> bool:
    """Whether tensor names look like a LoRA-family adapter rather than a model."""
    return any(_adapter_key(k) for k in keys)  # type: ignore[attr-defined]


def _adapter_key(key: str) -> bool:
    return (
        key.startswith(("lora_unet_", "lora_te"))
        or ".lora_down." in key
        or ".lora_A." in key
        or ".lora.down." in key
        or ".hada_w1_a" in key
        or ".lokr_w1" in key
    )


def detect_adapter(tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str]) -> AdapterKind | None:
    """The adapter's kind and base, or None when the tensors are not an adapter's."""
    keys = list(tensors)
    if not any(_adapter_key(k) for k in keys):
        return None
    layout = "kohya" if any(k.startswith(("lora_unet_", "lora_te")) for k in keys) else "peft"
    kind = "lora"
    if any(".hada_w1_a" in k for k in keys):
        kind = "loha"
    elif any(".lokr_w1" in k for k in keys):
        kind = "lokr"
    elif any(k.endswith(("lora_down.weight", "lora_A.weight")) and len(t.shape) == 4 for k, t in tensors.items()):
        kind = "locon"  # convolution layers too: diffusers applies these like any LoRA
    base, decided_by = _base(tensors, metadata)
    reason = ""
    if kind in ("loha", "lokr"):
        name = {"loha": "LoHa", "lokr": "LoKr"}[kind]
        reason = f"LyCORIS {name} adapters cannot be applied yet (diffusers loads LoRA and LoCon only)"
    elif not base:
        reason = "its base model could not be told from its metadata or keys"
    return AdapterKind(kind, layout, base, decided_by, not reason, reason)


def _flux_generation(tensors: Mapping[str, TensorInfo]) -> tuple[str, str] | None:
    """FLUX.1 or FLUX.2 for a LoRA in BFL's names (`single_blocks.N.linear1`), which the two share:
    a single block's fused input projection is q, k, v and the MLP's input, 3 + 4 widths for FLUX.1
    (an MLP 4 wide), 3 + 2 x 3 for FLUX.2 (a gated MLP 3 wide); the LoRA's up and down matrices
    give both numbers."""
    for key, tensor in tensors.items():
        if "single_blocks" in key and "linear1" in key and key.endswith(("lora_B.weight", "lora_up.weight")) and len(tensor.shape) == 2:
            down = tensors.get(key.replace("lora_B", "lora_A").replace("lora_up", "lora_down"))
            if down is None or len(down.shape) != 2 or not down.shape[1]:
                continue
            ratio = tensor.shape[0] / down.shape[1]
            if ratio == 9:
                return "flux2", key
            if ratio == 7:
                return "flux", key
    return None


def _base(tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str]) -> tuple[str, str]:
    version = str(metadata.get("ss_base_model_version", ""))
    if version.startswith("sdxl_"):
        return "sdxl", "ss_base_model_version"
    if version.startswith(("sd_v2", "sd_2")):
        return "sd2", "ss_base_model_version"
    if version.startswith(("sd_v1", "sd_1")):
        return "sd1", "ss_base_model_version"
    if version.startswith(("flux2", "flux_2", "flux-2", "flux.2")):
        return "flux2", "ss_base_model_version"
    if version.startswith("flux"):
        return "flux", "ss_base_model_version"
    if version.startswith("sd3"):
        return "sd3", "ss_base_model_version"
    for prefix, base in _TRANSFORMER_BASE:
        if version.startswith(prefix):
            return base, "ss_base_model_version"
    if str(metadata.get("ss_v2", "")) == "True":
        return "sd2", "ss_v2"
    architecture = str(metadata.get("modelspec.architecture", "")).lower()
    for prefix, base in _MODELSPEC_BASE + _TRANSFORMER_BASE:
        if architecture.startswith(prefix):
            return base, "modelspec.architecture"
    keys = list(tensors)
    for key in keys:
        if any(module in key for module in _FLUX2_MODULES):
            return "flux2", key
    told = _flux_generation(tensors)
    if told:
        return told
    for key in keys:
        if any(module in key for module in _FLUX_MODULES) or key.startswith("lora_transformer_"):
            return "flux", key  # before Qwen-Image: Flux's double blocks have an img_mlp too
    for key in keys:
        if any(module in key for module in _QWEN_IMAGE_MODULES):
            return "qwen-image", key
        if any(module in key for module in _Z_IMAGE_MODULES):
            return "z-image", key
    for key in keys:
        if key.startswith(("lora_te2_", "text_encoder_2.")):
            return "sdxl", key
    for key, tensor in tensors.items():
        cross_k = "attn2_to_k" in key or "attn2.to_k" in key
        if (
            cross_k
            and key.endswith(("lora_down.weight", "lora_A.weight", "lora.down.weight"))
            and len(tensor.shape) == 2
        ):
            base = _CROSS_WIDTH.get(tensor.shape[1])
            if base:
                return base, key
    for key, tensor in tensors.items():
        text_encoder = key.startswith(("lora_te_", "text_encoder."))
        if text_encoder and key.endswith(("lora_down.weight", "lora_A.weight")) and len(tensor.shape) == 2:
            base = {768: "sd1", 1024: "sd2"}.get(tensor.shape[1])
            if base:
                return base, key
    return "", ""


# --- textual-inversion embeddings ------------------------------------------------------------------
# Followed (facts, not code) from AUTOMATIC1111 modules/textual_inversion/textual_inversion.py
# `create_embedding_from_data`: A1111's .pt holds `string_to_param` {"*": tensor (vectors, width)};
# a .safetensors holds `emb_params`; a diffusers .bin one tensor under its token; SDXL embeddings
# hold `clip_l` (768 wide) and `clip_g` (1280 wide), one per text encoder.
_EMBEDDING_WIDTH = {768: "sd1", 1024: "sd2"}


@dataclass(frozen=True)
class EmbeddingKind:
    layout: str  # a1111 | safetensors | diffusers | sdxl
    base: str  # sd1 | sd2 | sdxl | ""
    vectors: int
    decided_by: str  # the tensor whose width told the base
    loadable: bool
    reason: str = ""


def detect_embedding(
    tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str] | None = None
) -> EmbeddingKind | None:
    """The embedding a file holds, or None when its tensors are not one. The base comes from modelspec
    when the file says, else from the vectors' width."""
    if "clip_l" in tensors and "clip_g" in tensors:
        l_shape, g_shape = tensors["clip_l"].shape, tensors["clip_g"].shape
        stated = str((metadata or {}).get("modelspec.architecture", "")).lower().startswith("stable-diffusion-xl")
        widths_fit = stated or (l_shape[-1], g_shape[-1]) == (768, 1280)
        if len(l_shape) == 2 and len(g_shape) == 2 and widths_fit and l_shape[0] == g_shape[0]:
            return EmbeddingKind("sdxl", "sdxl", l_shape[0], "modelspec.architecture" if stated else "clip_g", True)
        return EmbeddingKind(
            "sdxl", "", 0, "clip_g", False, "its clip_l and clip_g tensors do not match SDXL's encoders"
        )
    if "emb_params" in tensors:
        key, layout = "emb_params", "safetensors"
    elif len(tensors) == 1 and next(iter(tensors)).startswith("string_to_param."):
        key, layout = next(iter(tensors)), "a1111"
    elif len(tensors) == 1:
        key, layout = next(iter(tensors)), "diffusers"
    else:
        return None
    shape = tensors[key].shape
    if len(shape) == 1:
        shape = (1, shape[0])
    if len(shape) != 2 or not 1 <= shape[0] <= 75:
        return None
    base, decided_by = _EMBEDDING_WIDTH.get(shape[1], ""), key
    architecture = str((metadata or {}).get("modelspec.architecture", "")).lower()
    stated = next((b for prefix, b in _MODELSPEC_BASE if architecture.startswith(prefix)), "")
    if stated in ("sd1", "sd2"):
        base, decided_by = stated, "modelspec.architecture"
    if layout == "diffusers" and not base:
        return None  # one tensor under any name: an embedding only if it is as wide as one
    reason = "" if base else f"its vectors are {shape[1]} wide; SD1 embeddings are 768 wide, SD2 1024"
    return EmbeddingKind(layout, base, shape[0], decided_by, bool(base), reason)


def embedding_label(base: str, vectors: int) -> str:
    return f"embedding for {BASE_LABELS.get(base, base)} ({vectors} vector{'s' if vectors != 1 else ''})"
