"""Read and validate a .safetensors header without touching the tensor data.

The checks follow the reference reader (huggingface/safetensors): an 8-byte little-endian
header length N (at most 100,000,000), N bytes of UTF-8 JSON, tensor byte ranges contiguous
from 0 with sizes equal to numel x dtype size, and a file exactly 8 + N + data bytes long.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bot.untrusted import RefusedValue, bounded_int, clean_text, has_lone_surrogate, no_constant
from common.errors import CheckpointFileError
from common.tensors import DTYPE_SIZES, TensorInfo

MAX_HEADER_BYTES = 100_000_000
# The largest real files (an all-in-one Flux or SD3.5 checkpoint, a big LyCORIS) hold a few
# thousand tensors; a header claiming more is a CPU and memory bomb, refused before parsing it.
MAX_TENSORS = 100_000
MAX_DIMS = 32
_MAX_DIGITS = 20
# Real metadata (kohya's ss_*, modelspec.*, A1111's merge recipe) is tens of keys; millions of them
# took gigabytes to parse, and were stored and parsed again on every listing.
MAX_METADATA_KEYS = 1_000
# The JSON's shape, counted on its bytes before parsing: a tensor's entry is five strings (name,
# "dtype", its value, "shape", "data_offsets") and three containers; metadata is two strings a key
# (quotes escaped inside a string, as in kohya's JSON-in-a-string tag counts, are not strings).
# Braces inside strings count as containers, so some room is left for them.
_SPARE_STRINGS = 64
_SPARE_CONTAINERS = 10_000


@dataclass(frozen=True)
class StoredTensor(TensorInfo):
    """A tensor with its byte range relative to the start of the data section."""

    begin: int = 0
    end: int = 0


@dataclass
class SafetensorsHeader:
    header_length: int
    file_size: int
    tensors: dict[str, StoredTensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return 8 + self.header_length


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise CheckpointFileError(f"header names {key[:200]!r} twice")
        out[key] = value
    return out


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate the header of `path`; raise CheckpointFileError with a one-line reason."""
    file_size = os.stat(path).st_size
    if file_size == 0:
        raise CheckpointFileError("file is empty")
    with open(path, "rb") as f:
        prefix = f.read(9)
        if len(prefix) < 8:
            raise CheckpointFileError(f"file is truncated: {file_size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", prefix[:8])
        # The format says the header begins with "{"; say what the file is not before reasoning about
        # a length that is really eight bytes of text.
        if prefix[8:9] != b"{":
            raise CheckpointFileError("not a safetensors file (no JSON header after the 8-byte length)")
        if n > MAX_HEADER_BYTES:
            raise CheckpointFileError(f"header claims {n:,} bytes, over the 100,000,000-byte limit")
        if 8 + n > file_size:
            raise CheckpointFileError(f"header length {n:,} runs past the end of the file ({file_size:,} bytes)")
        f.seek(8)
        # The bytes are dropped as soon as they are decoded: at most two copies of a large header
        # (its text, then what it parses to) are ever held at once.
        obj = _parse_json(_decode(f.read(n)))
    if not isinstance(obj, dict):
        raise CheckpointFileError("header is not a JSON object")

    metadata = _parse_metadata(obj.pop("__metadata__", {}))
    tensors = {_tensor_name(name): _parse_tensor(name, spec) for name, spec in obj.items()}
    data_size = _check_layout(tensors)
    expected = 8 + n + data_size
    if expected > file_size:
        raise CheckpointFileError(
            f"file is truncated: the header describes {expected:,} bytes, the file has {file_size:,}"
        )
    if expected < file_size:
        raise CheckpointFileError(f"file has {file_size - expected:,} unexpected bytes after the last tensor")
    return SafetensorsHeader(header_length=n, file_size=file_size, tensors=tensors, metadata=metadata)


def _decode(raw: bytes) -> str:
    count = raw.count(b'"data_offsets"')
    if count > MAX_TENSORS:  # counted on the bytes, before any parsing
        raise CheckpointFileError(f"header describes {count:,} tensors, over the limit of {MAX_TENSORS:,}")
    # Strings and containers beyond what the tensors and the metadata can use: refused before
    # anything is parsed (millions of metadata keys, or of empty objects under an ignored key, took
    # gigabytes and seconds to parse).
    strings = (raw.count(b'"') - raw.count(b'\\"')) // 2
    if strings > 5 * count + 2 * MAX_METADATA_KEYS + _SPARE_STRINGS:
        raise CheckpointFileError(
            f"header holds {strings:,} strings for {count:,} tensors; metadata may have at most "
            f"{MAX_METADATA_KEYS:,} keys"
        )
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > 3 * count + _SPARE_CONTAINERS:
        raise CheckpointFileError(f"header holds {containers:,} JSON objects and lists for {count:,} tensors")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointFileError(f"header is not valid UTF-8 (byte {e.start})") from None


def _parse_json(text: str) -> object:
    """The header's JSON, refusing while parsing whatever would cost far more than its size."""
    try:
        return json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_int=lambda digits: bounded_int(digits, _MAX_DIGITS),  # offsets and sizes fit in 64 bits
            parse_constant=no_constant,
        )
    except json.JSONDecodeError as e:
        raise CheckpointFileError(f"header is not valid JSON: {e.msg} at character {e.pos}") from None
    except RefusedValue as e:
        raise CheckpointFileError(f"header holds {e}") from None
    except RecursionError:
        raise CheckpointFileError("header nests JSON too deeply to be a safetensors header") from None


def _tensor_name(name: str) -> str:
    if has_lone_surrogate(name):
        raise CheckpointFileError("a tensor name in the header is not valid Unicode (a lone surrogate)")
    return name


def _parse_metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise CheckpointFileError("__metadata__ is not a JSON object")
    if len(value) > MAX_METADATA_KEYS:
        raise CheckpointFileError(f"metadata has {len(value):,} keys, over the limit of {MAX_METADATA_KEYS:,}")
    clean: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise CheckpointFileError(
                f"metadata value for {clean_text(key)[:100]!r} is a {type(item).__name__}, "
                "but safetensors metadata must be strings"
            )
        clean[clean_text(key)] = clean_text(item)
    return clean


def _parse_tensor(name: str, spec: object) -> StoredTensor:
    if not isinstance(spec, dict):
        raise CheckpointFileError(f"tensor {name[:200]!r}: entry is not a JSON object")
    dtype = spec.get("dtype")
    shape = spec.get("shape")
    offsets = spec.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise CheckpointFileError(f"tensor {name[:200]!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape) or len(shape) > MAX_DIMS:
        raise CheckpointFileError(
            f"tensor {name[:200]!r}: shape must be a list of at most {MAX_DIMS} non-negative integers"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointFileError(f"tensor {name[:200]!r}: data_offsets must be [begin, end] with 0 <= begin <= end")
    tensor = StoredTensor(name=name, dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])
    if tensor.end - tensor.begin != tensor.nbytes:
        raise CheckpointFileError(
            f"tensor {name[:200]!r}: {tensor.end - tensor.begin:,} bytes stored, but shape {list(tensor.shape)} "
            f"of {dtype} needs {tensor.nbytes:,}"
        )
    return tensor


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(tensors: dict[str, StoredTensor]) -> int:
    """Byte ranges must tile [0, end) exactly; return the data section size."""
    expected = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin < expected:
            raise CheckpointFileError(f"tensor {t.name[:200]!r} overlaps the tensor before it (offset {t.begin:,})")
        if t.begin > expected:
            raise CheckpointFileError(
                f"gap in tensor data before {t.name[:200]!r}: bytes {expected:,}-{t.begin:,} belong to no tensor"
            )
        expected = t.end
    return expected
