"""Read and validate a GGUF file's header without touching its tensor data (no torch, no numpy).

GGUF is llama.cpp's format, and city96's ComfyUI-GGUF ships diffusion transformers in it
(`flux1-dev-Q8_0.gguf`, `qwen-image-Q4_K_M.gguf`). The layout follows ggml's gguf.h and the `gguf`
package's reader: "GGUF", a version (2 or 3), the tensor and key/value counts (64-bit), the key/value
pairs, one record per tensor (name, dimensions innermost first, ggml type, offset), then the data
section at the next multiple of `general.alignment` (32 by default), each tensor at an aligned offset.

The file is someone else's: every count and length is bounded before it is used (a header claiming
a billion tensors or a string of 2**63 bytes is refused before anything is allocated for it), tensor
sizes are computed from their dimensions and type and must lie inside the file without overlapping,
and every problem is a one-line CheckpointFileError. Arrays among the key/value pairs (an LLM's
tokenizer vocabulary) are stepped over, not kept.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from common.errors import CheckpointFileError
from common.tensors import GGML_BLOCKS, TensorInfo

MAGIC = b"GGUF"
MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS = 100_000
MAX_KEYS = 10_000
MAX_NAME_BYTES = 1024  # ggml's own limit is 64; room for longer names without inviting huge ones
MAX_KEPT_VALUE_CHARS = 64 * 1024
MAX_DIMS = 4  # GGML_MAX_DIMS
# An LLM's vocabulary is a few hundred thousand strings; each is stepped over one by one.
MAX_ARRAY_STRINGS = 1_000_000
MAX_ALIGNMENT = 1 << 20

# ggml's tensor types (ggml.h `enum ggml_type`; the `gguf` package's GGMLQuantizationType): the
# number in the file -> the name people read in a file name ("Q8_0") and tests compare with gguf's.
GGML_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
UNQUANTISED = frozenset({"F32", "F16", "BF16"})
# The quantised types diffusers widens back to numbers (diffusers/quantizers/gguf/utils.py
# `dequantize_functions`): the ones a GGUF transformer may hold to run here.
DEQUANTISED = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"})

# Key/value types (gguf.h `enum gguf_type`): scalars by their byte size and struct format.
_SCALARS: dict[int, tuple[int, str]] = {
    0: (1, "<B"), 1: (1, "<b"), 2: (2, "<H"), 3: (2, "<h"), 4: (4, "<I"), 5: (4, "<i"),
    6: (4, "<f"), 7: (1, "<?"), 10: (8, "<Q"), 11: (8, "<q"), 12: (8, "<d"),
}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor(TensorInfo):
    """A tensor's logical shape (outermost first, as torch has it) and where its bytes lie in the file."""

    offset: int = 0  # from the start of the file

    @property
    def quantised(self) -> bool:
        return self.dtype not in UNQUANTISED


@dataclass
class GGUFHeader:
    version: int
    alignment: int
    data_start: int
    file_size: int
    tensors: dict[str, GGUFTensor]
    metadata: dict[str, str] = field(default_factory=dict)


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


class _Reader:
    """Reads the header's little-endian fields, never past the header's limit or the file's end."""

    def __init__(self, f: BinaryIO, file_size: int) -> None:
        self.f = f
        self.pos = 0
        self.file_size = file_size

    def _room(self, n: int, what: str) -> None:
        if self.pos + n > self.file_size:
            raise CheckpointFileError(f"file is truncated: the header's {what} runs past its end")
        if self.pos + n > MAX_HEADER_BYTES:
            raise CheckpointFileError(f"the header is over the {MAX_HEADER_BYTES:,}-byte limit")

    def take(self, n: int, what: str) -> bytes:
        self._room(n, what)
        data = self.f.read(n)
        if len(data) != n:
            raise CheckpointFileError(f"file is truncated: the header's {what} runs past its end")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self._room(n, what)
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str, most: int) -> bytes:
        n = self.u64(what)
        if n > most:
            raise CheckpointFileError(f"the header's {what} claims {n:,} bytes, over the limit of {most:,}")
        return self.take(n, what)


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse and validate the header of `path`; raise CheckpointFileError with a one-line reason."""
    file_size = os.stat(path).st_size
    with open(path, "rb") as f:
        r = _Reader(f, file_size)
        if r.take(4, "magic") != MAGIC:
            raise CheckpointFileError("not a GGUF file (it does not start with 'GGUF')")
        version = r.u32("version")
        if version not in (2, 3):
            raise CheckpointFileError(f"GGUF version {version} is not read (versions 2 and 3 are)")
        n_tensors, n_keys = r.u64("tensor count"), r.u64("key count")
        if n_tensors > MAX_TENSORS:
            raise CheckpointFileError(f"the header describes {n_tensors:,} tensors, over the limit of {MAX_TENSORS:,}")
        if n_keys > MAX_KEYS:
            raise CheckpointFileError(f"the header holds {n_keys:,} keys, over the limit of {MAX_KEYS:,}")
        metadata: dict[str, str] = {}
        alignment = 32
        for _ in range(n_keys):
            key = _text(r.string("key", MAX_NAME_BYTES), "a key")
            if key in metadata:
                raise CheckpointFileError(f"the header names the key {key[:100]!r} twice")
            kind = r.u32(f"type of {key[:100]!r}")
            value = _value(r, kind, key)
            if key == "general.alignment":
                if kind != 4 or not isinstance(value, int) or value < 1 or value & (value - 1) or value > MAX_ALIGNMENT:
                    raise CheckpointFileError(f"general.alignment must be a power of two up to {MAX_ALIGNMENT:,}")
                alignment = value
            metadata[key] = "" if value is None else str(value)[:MAX_KEPT_VALUE_CHARS]
        tensors: dict[str, GGUFTensor] = {}
        for _ in range(n_tensors):
            name, dims, kind, offset = _tensor_record(r)
            if name in tensors:
                raise CheckpointFileError(f"the header names the tensor {name[:200]!r} twice")
            tensors[name] = _tensor(name, dims, kind, offset)
        data_start = -(-r.pos // alignment) * alignment
    _check_layout(tensors, alignment, data_start, file_size)
    placed = {name: _at(t, data_start) for name, t in tensors.items()}
    return GGUFHeader(version, alignment, data_start, file_size, placed, metadata)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointFileError(f"{what} in the header is not valid UTF-8") from None


def _value(r: _Reader, kind: int, key: str) -> int | float | bool | str | None:
    """One value: a scalar or a string kept (control characters dropped), an array stepped over."""
    what = f"value of {key[:100]!r}"
    if kind in _SCALARS:
        size, form = _SCALARS[kind]
        return struct.unpack(form, r.take(size, what))[0]
    if kind == _STRING:
        text = r.string(what, MAX_HEADER_BYTES).decode("utf-8", errors="replace")
        return "".join(c for c in text if c.isprintable() or c in "\n\t")
    if kind == _ARRAY:
        inner, count = r.u32(what), r.u64(what)
        if inner in _SCALARS:
            if count > MAX_HEADER_BYTES // _SCALARS[inner][0]:
                raise CheckpointFileError(f"the {what} claims {count:,} items, more than the header can hold")
            r.skip(count * _SCALARS[inner][0], what)
        elif inner == _STRING:
            if count > MAX_ARRAY_STRINGS:
                raise CheckpointFileError(f"the {what} claims {count:,} strings, over the limit of {MAX_ARRAY_STRINGS:,}")
            for _ in range(count):
                r.skip(r.u64(what), what)
        else:  # arrays of arrays: no diffusion file has them, and they would nest without bound
            raise CheckpointFileError(f"the {what} is an array of type {inner}, which is not read")
        return None
    raise CheckpointFileError(f"the {what} has unknown type {kind}")


def _tensor_record(r: _Reader) -> tuple[str, tuple[int, ...], int, int]:
    name = _text(r.string("tensor name", MAX_NAME_BYTES), "a tensor name")
    n_dims = r.u32(f"dimensions of {name[:200]!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise CheckpointFileError(f"tensor {name[:200]!r} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}")
    dims = tuple(r.u64(f"dimensions of {name[:200]!r}") for _ in range(n_dims))
    kind = r.u32(f"type of {name[:200]!r}")
    return name, dims, kind, r.u64(f"offset of {name[:200]!r}")


def _tensor(name: str, dims: tuple[int, ...], kind: int, offset: int) -> GGUFTensor:
    label = name[:200]
    if kind not in GGML_TYPES:
        raise CheckpointFileError(f"tensor {label!r} has unknown ggml type {kind}")
    dtype = GGML_TYPES[kind]
    wrong = next((d for d in dims if d < 1 or d > 1 << 40), None)
    if wrong is not None:
        raise CheckpointFileError(f"tensor {label!r} has a dimension of {wrong:,}, outside 1 to 2**40")
    block = GGML_BLOCKS.get(dtype, (1, 0))[0]
    if dims[0] % block:
        raise CheckpointFileError(f"tensor {label!r}: rows of {dims[0]:,} values do not fill {dtype}'s blocks of {block}")
    # ggml lists dimensions innermost first; torch outermost first.
    return GGUFTensor(name=name, dtype=dtype, shape=tuple(reversed(dims)), offset=offset)


def _check_layout(tensors: dict[str, GGUFTensor], alignment: int, data_start: int, file_size: int) -> None:
    """Each tensor at an aligned offset, right after the one before it (writers pad to the alignment),
    inside the file, with no more than padding after the last."""
    end = 0
    for t in sorted(tensors.values(), key=lambda t: t.offset):
        if t.offset % alignment:
            raise CheckpointFileError(f"tensor {t.name[:200]!r} starts at {t.offset:,}, not a multiple of the alignment {alignment}")
        if t.offset < end:
            raise CheckpointFileError(f"tensor {t.name[:200]!r} overlaps the tensor before it")
        if t.offset - end >= alignment:
            raise CheckpointFileError(f"{t.offset - end:,} unexplained bytes lie before tensor {t.name[:200]!r}")
        end = t.offset + t.nbytes
        if data_start + end > file_size:
            raise CheckpointFileError(
                f"file is truncated: tensor {t.name[:200]!r} ends at byte {data_start + end:,}, the file has {file_size:,}"
            )
    if file_size - (data_start + end) >= max(alignment, 1) and tensors:
        raise CheckpointFileError(f"file has {file_size - data_start - end:,} unexpected bytes after the last tensor")


def _at(t: GGUFTensor, data_start: int) -> GGUFTensor:
    return GGUFTensor(name=t.name, dtype=t.dtype, shape=t.shape, offset=data_start + t.offset)


def describe(tensors: dict[str, GGUFTensor] | list[GGUFTensor]) -> str:
    """What a GGUF file's weights are, as a person reads it: its main type by bytes, then the rest."""
    by_type: dict[str, int] = {}
    for t in tensors.values() if isinstance(tensors, dict) else tensors:
        by_type[t.dtype] = by_type.get(t.dtype, 0) + t.nbytes
    kinds = sorted(by_type, key=lambda k: -by_type[k])
    others = f" (some tensors {', '.join(kinds[1:])})" if len(kinds) > 1 else ""
    return f"GGUF {kinds[0] if kinds else 'empty'}{others}: kept quantised in memory, each layer widened as it runs"


def unreadable_types(tensors: dict[str, GGUFTensor]) -> list[str]:
    """The types in the file that the worker cannot widen (e.g. IQ2_XS), each once."""
    return sorted({t.dtype for t in tensors.values()} - UNQUANTISED - DEQUANTISED)


# llama.cpp names a text encoder's tensors its own way; these give the original model's names back,
# each pair replaced in turn (ComfyUI-GGUF loader.py T5_SD_MAP and LLAMA_SD_MAP). Llama itself is
# left out: llama.cpp reorders its query and key rows, which would have to be undone.
_T5_NAMES = (
    ("enc.", "encoder."), (".blk.", ".block."), ("token_embd", "shared"), ("output_norm", "final_layer_norm"),
    ("attn_q", "layer.0.SelfAttention.q"), ("attn_k", "layer.0.SelfAttention.k"), ("attn_v", "layer.0.SelfAttention.v"),
    ("attn_o", "layer.0.SelfAttention.o"), ("attn_norm", "layer.0.layer_norm"),
    ("attn_rel_b", "layer.0.SelfAttention.relative_attention_bias"), ("ffn_up", "layer.1.DenseReluDense.wi_1"),
    ("ffn_down", "layer.1.DenseReluDense.wo"), ("ffn_gate", "layer.1.DenseReluDense.wi_0"), ("ffn_norm", "layer.1.layer_norm"),
)  # fmt: skip
_QWEN_NAMES = (
    ("blk.", "model.layers."), ("attn_norm", "input_layernorm"), ("attn_q_norm.", "self_attn.q_norm."),
    ("attn_k_norm.", "self_attn.k_norm."), ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"), ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_norm", "post_attention_layernorm"),
    ("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output.weight", "lm_head.weight"),
)  # fmt: skip
TEXT_ENCODER_NAMES: dict[str, tuple[tuple[str, str], ...]] = {"t5": _T5_NAMES, "t5encoder": _T5_NAMES, "qwen3": _QWEN_NAMES}


def original_names(header: GGUFHeader) -> dict[str, GGUFTensor]:
    """The tensors under the original model's names: a text encoder's renamed from llama.cpp's (by
    its `general.architecture`), a diffusion model's as they are (city96's files keep them)."""
    pairs = TEXT_ENCODER_NAMES.get(header.metadata.get("general.architecture", ""))
    if pairs is None:
        return header.tensors
    renamed: dict[str, GGUFTensor] = {}
    for name, tensor in header.tensors.items():
        for theirs, ours in pairs:
            name = name.replace(theirs, ours)
        if name in renamed:
            raise CheckpointFileError(f"two tensors are both {name[:200]!r} under their original names")
        renamed[name] = replace(tensor, name=name)
    return renamed


def llama_cpp_names(names: list[str], architecture: str) -> dict[str, str]:
    """The other way, for writing test files: each original name -> llama.cpp's."""
    pairs = TEXT_ENCODER_NAMES[architecture]
    out = {}
    for name in names:
        theirs = name
        for llama, ours in reversed(pairs):
            theirs = theirs.replace(ours, llama)
        out[name] = theirs
    return out
