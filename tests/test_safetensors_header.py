"""The header reader accepts what the reference reader accepts and rejects each malformed case."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bot.checkpoints.safetensors_header import read_header
from common.errors import CheckpointFileError


def raw_file(
    path: Path, header: object, data: bytes = b"", *, header_bytes: bytes | None = None, length: int | None = None
) -> Path:
    blob = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def test_reads_file_written_by_reference_library(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    save_file(
        {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float16)},
        str(path),
        metadata={"modelspec.title": "Test"},
    )
    header = read_header(path)
    assert header.tensors["a"].shape == (2, 3) and header.tensors["a"].dtype == "F32"
    assert header.tensors["b"].nbytes == 8
    assert header.metadata == {"modelspec.title": "Test"}
    assert header.file_size == path.stat().st_size


GOOD = {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}

BAD_CASES = {
    "truncated_prefix": (lambda p: p.write_bytes(b"\x10\x00\x00"), "truncated"),
    "empty": (lambda p: p.write_bytes(b""), "file is empty"),
    "header_past_end": (lambda p: raw_file(p, GOOD, length=10_000), "runs past the end"),
    "header_over_100mb": (lambda p: raw_file(p, GOOD, length=100_000_001), "over the 100,000,000-byte limit"),
    "invalid_utf8": (lambda p: raw_file(p, None, b"", header_bytes=b'{"\xff\xfe": 1}'), "not valid UTF-8"),
    "invalid_json": (lambda p: raw_file(p, None, b"", header_bytes=b'{"t": {'), "not valid JSON"),
    "not_an_object": (lambda p: raw_file(p, [1, 2]), "not a safetensors file"),  # the format says: it begins with {
    "overlap": (
        lambda p: raw_file(
            p,
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
        ),
        "overlaps",
    ),
    "gap": (
        lambda p: raw_file(
            p,
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
            },
            bytes(20),
        ),
        "gap in tensor data",
    ),
    "size_mismatch": (
        lambda p: raw_file(p, {"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
        "needs 12",
    ),
    "non_string_metadata": (
        lambda p: raw_file(p, {**GOOD, "__metadata__": {"steps": 1000}}, bytes(8)),
        "must be strings",
    ),
    "truncated_data": (lambda p: raw_file(p, GOOD, bytes(4)), "file is truncated"),
    "trailing_bytes": (lambda p: raw_file(p, GOOD, bytes(16)), "unexpected bytes after the last tensor"),
    "unknown_dtype": (
        lambda p: raw_file(p, {"t": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
        "unknown dtype",
    ),
    "negative_shape": (
        lambda p: raw_file(p, {"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
        "shape",
    ),
    "reversed_offsets": (
        lambda p: raw_file(p, {"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)),
        "data_offsets",
    ),
    "duplicate_key": (
        lambda p: raw_file(
            p,
            None,
            bytes(8),
            header_bytes=b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
        ),
        "twice",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_rejects_malformed_header(tmp_path: Path, case: str) -> None:
    make, reason = BAD_CASES[case]
    path = tmp_path / f"{case}.safetensors"
    make(path)
    with pytest.raises(CheckpointFileError, match=reason):
        read_header(path)


def test_header_read_does_not_read_tensor_data(tmp_path: Path) -> None:
    """A file whose data section is sparse and huge still parses: only the header is read."""
    path = tmp_path / "huge.safetensors"
    n = 3 * 1024**3
    raw_file(path, {"t": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}})
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size + n)
    assert read_header(path).tensors["t"].nbytes == n
