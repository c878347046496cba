"""Write a .safetensors file tensor by tensor, atomically (temp file in the same folder, then rename).

Tensor data comes from a callback, one tensor at a time, as bytes or as an iterator of buffers
(chunks), so the writer itself never holds more than one chunk.
A failure or an interruption leaves no output and no temp file behind.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from common.tensors import TensorInfo


def write_safetensors(
    out: Path,
    tensors: Sequence[TensorInfo],
    read: Callable[[TensorInfo], bytes | Iterable[bytes | memoryview]],
    metadata: dict[str, str] | None = None,
    *,
    temp: Path | None = None,
) -> Path:
    """Write to `temp` (default: a hidden sibling), then rename to `out`. Nothing is left on failure."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the reference writer aligns the data section to 8 bytes
    tmp = temp or temp_path(out)
    try:
        with open(tmp, "xb") as f:  # created with the usual permissions (umask), unlike mkstemp's 0600
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for t in tensors:
                data = read(t)
                written = 0
                for chunk in [data] if isinstance(data, bytes) else data:
                    written += f.write(chunk)
                if written != t.nbytes:
                    raise ValueError(f"tensor {t.name!r}: got {written} bytes, expected {t.nbytes}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def temp_path(out: Path) -> Path:
    """A hidden, unique sibling of `out` to write before renaming: same folder, same file system."""
    return out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
