"""Text encoders on their own (the component store): CLIP-L, CLIP-G, T5-XXL and Qwen3 files that a
transformer-only checkpoint (Flux's flux1-dev.safetensors, Z-Image's z_image_turbo) needs beside it.

They live where ComfyUI and Forge users keep them: `models/text_encoders` (ComfyUI's current name)
or `models/clip` (its older one), found, hashed and read as every other file (the safetensors header
reader, or the GGUF one for city96's quantised T5 and Qwen3 files, their llama.cpp names read back as
the original model's; the registry machinery of bot/networks/registry.py). What a file is comes from its tensor
names and widths alone: CLIP's `…text_model.embeddings.token_embedding.weight` (768 wide for CLIP-L,
1280 for CLIP-G), T5's `…encoder.block.0.layer.0.SelfAttention.q.weight` (4096 wide for T5-XXL),
Qwen3's `…layers.0.self_attn.q_norm.weight` beside its `…embed_tokens.weight` (2560 wide for Qwen3-4B,
as qwen_3_4b.safetensors), under any of the prefixes real files carry (none; `model.`; ComfyUI's
`text_encoders.t5xxl.transformer.`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from bot.components.detection import TEXT_ENCODER_FOLDERS
from bot.config import Settings
from bot.networks.registry import FileKind, NetworkEntry, NetworkRegistry, read_tensor_map
from common.errors import CheckpointFileError
from common.gguf_header import (
    TEXT_ENCODER_NAMES,
    GGUFTensor,
    is_gguf,
    original_names,
    read_gguf_header,
    unreadable_types,
)
from common.protocol import ComponentUse

_T5_Q = "encoder.block.0.layer.0.SelfAttention.q.weight"
_CLIP_TOKENS = "embeddings.token_embedding.weight"
# Qwen3 (Z-Image's text encoder): its per-head query norm sets it apart from Qwen2 and Qwen2.5.
_QWEN3_Q_NORM = "layers.0.self_attn.q_norm.weight"
_QWEN_TOKENS = "embed_tokens.weight"
# Qwen2.5-VL (Qwen-Image's): Qwen2's biased query projection beside a vision tower (`visual.`).
_QWEN2_Q_BIAS = "layers.0.self_attn.q_proj.bias"
_KNOWN_WIDTHS = {
    ("t5xxl", 4096): "T5-XXL",
    ("clip-l", 768): "CLIP-L",
    ("clip-g", 1280): "CLIP-G",
    ("qwen3", 2560): "Qwen3-4B",
    ("qwen3", 4096): "Qwen3-8B",  # FLUX.2 [klein] 9B's
    ("qwen25vl", 3584): "Qwen2.5-VL-7B",
}
_FAMILY_NAMES = {"t5xxl": "T5", "qwen3": "Qwen3", "qwen25vl": "Qwen2.5-VL"}


class TextEncoderFileError(ValueError):
    """Not a text encoder we can use; the message says why."""


@dataclass(frozen=True)
class TextEncoderKind:
    role: str  # clip-l | clip-g | t5xxl | qwen3 | qwen25vl
    width: int  # hidden size: what the checkpoint's transformer must take
    prefix: str

    @property
    def label(self) -> str:
        name = _KNOWN_WIDTHS.get((self.role, self.width))
        if name:
            return f"{name} text encoder"
        family = _FAMILY_NAMES.get(self.role, "CLIP")
        return f"{family} text encoder ({self.width} wide)"


def detect_text_encoder(shapes: Mapping[str, Sequence[int]], file_name: str = "") -> TextEncoderKind:
    """What a text-encoder file is. CLIP-L and CLIP-G differ only in width (768, 1280); a CLIP of
    another width (a test file) is CLIP-G when its file name says so (clip_g.safetensors), else CLIP-L."""
    if any(name.startswith(("model.diffusion_model.", "double_blocks.", "joint_blocks.", "cap_embedder.")) for name in shapes):
        raise TextEncoderFileError("a whole checkpoint or transformer, not a text encoder; put it in the models folder")
    for name in shapes:
        if name.endswith(_QWEN2_Q_BIAS) and any(".visual." in k or k.startswith("visual.") for k in shapes):
            base = name[: -len(_QWEN2_Q_BIAS)]  # "model." (Qwen's own names), under any prefix
            tokens = shapes.get(base + _QWEN_TOKENS)
            if tokens is not None and len(tokens) == 2:
                return TextEncoderKind("qwen25vl", int(tokens[1]), base.removesuffix("model."))
    for name in shapes:
        if name.endswith(_QWEN3_Q_NORM):
            prefix = name[: -len(_QWEN3_Q_NORM)]
            tokens = shapes.get(prefix + _QWEN_TOKENS)
            if tokens is not None and len(tokens) == 2:
                return TextEncoderKind("qwen3", int(tokens[1]), prefix)
    for name, shape in shapes.items():
        if name.endswith(_T5_Q) and len(shape) == 2:
            return TextEncoderKind("t5xxl", int(shape[1]), name[: -len(_T5_Q)])
    for name, shape in shapes.items():
        if name.endswith(_CLIP_TOKENS) and len(shape) == 2:
            width = int(shape[1])
            prefix = name[: -len(_CLIP_TOKENS)].removesuffix("text_model.")
            named_g = "clip_g" in file_name.lower() or "clip-g" in file_name.lower()
            role = "clip-g" if width == 1280 or (width != 768 and named_g) else "clip-l"
            return TextEncoderKind(role, width, prefix)
    raise TextEncoderFileError(
        f"not a CLIP, T5, Qwen3 or Qwen2.5-VL text encoder (no …{_CLIP_TOKENS}, …{_T5_Q}, …{_QWEN3_Q_NORM} or …{_QWEN2_Q_BIAS})"
    )


def examine_text_encoder(path: Path) -> FileKind:
    if path.is_file() and is_gguf(path):
        tensors, metadata, form = _gguf_tensors(path)
    else:
        tensors, metadata, pickled = read_tensor_map(path)
        if pickled:
            raise CheckpointFileError(f"{path.name}: text encoders are read from .safetensors and .gguf files only")
        form = "safetensors"
    try:
        kind = detect_text_encoder({name: t.shape for name, t in tensors.items()}, path.name)
    except TextEncoderFileError as e:
        raise CheckpointFileError(f"{path.name}: {e}") from None
    return FileKind("text_encoder", "hf", kind.role, kind.label, True, "", kind.width, metadata, form)


def _gguf_tensors(path: Path) -> tuple[dict[str, GGUFTensor], dict[str, str], str]:
    """A GGUF text encoder (city96's t5-v1_1-xxl-encoder-Q8_0.gguf, a Qwen3-4B GGUF) under its
    original names; an architecture whose names are not known here is refused by name."""
    try:
        header = read_gguf_header(path)
        architecture = header.metadata.get("general.architecture", "")
        if architecture not in TEXT_ENCODER_NAMES:
            raise CheckpointFileError(
                f"a GGUF {architecture or 'file'} is not a text encoder this reads (T5 and Qwen3 GGUF files are; "
                "Qwen2.5-VL's GGUF lacks the vision tower Qwen-Image reads pictures with)"
            )
        unreadable = unreadable_types(header.tensors)
        if unreadable:
            raise CheckpointFileError(f"it holds {', '.join(unreadable)} weights, which cannot be widened here")
        return original_names(header), header.metadata, "gguf"
    except CheckpointFileError as e:
        raise CheckpointFileError(f"{path.name}: {e}") from None


class TextEncoderRegistry(NetworkRegistry):
    noun = "text encoder"
    family = "text_encoder"
    table = "text_encoders"
    folder_names = TEXT_ENCODER_FOLDERS
    suffixes = (".safetensors", ".gguf")
    list_command = "text-encoders list"

    def examine_file(self, path: Path) -> FileKind:
        return examine_text_encoder(path)

    def short_hash(self, path: Path, sha256: str) -> str:
        return sha256[:10]

    def alias(self, path: Path, found: FileKind) -> str:
        return ""

    async def fitting(self, role: str, width: int) -> NetworkEntry | None:
        """The installed encoder for `role` ("clip_l", "clip_g", "t5xxl", "qwen3", "qwen25vl") of `width` (0: any, when the
        checkpoint does not say); of several, the first by name."""
        wanted = role.replace("_", "-")
        for entry in sorted(await self.list(status="present"), key=lambda e: e.name.lower()):
            if entry.base == wanted and (entry.rank == width or not width):
                return entry
        return None


def component_use(role: str, entry: NetworkEntry) -> ComponentUse:
    return ComponentUse(role, entry.path.name, str(entry.path), entry.sha256)


def text_encoder_registry(db: aiosqlite.Connection, settings: Settings) -> TextEncoderRegistry:
    return TextEncoderRegistry(db, settings.models_dir.expanduser().resolve(), settings.text_encoder_dirs or None)
