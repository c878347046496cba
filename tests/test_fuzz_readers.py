"""Property-based tests of the file readers: random and mutated files never crash, never run code,
stay within a memory bound, and give either a valid result or one CheckpointFileError.

Budgets are fixed and derandomized (the same examples every run), so CI time stays predictable.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import sys
import tempfile
import tracemalloc
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.checkpoints.safetensors_header import read_header
from common.errors import CheckpointFileError
from common.pickle_reader import read_pickle_checkpoint
from common.safe_pickle import StorageRef, StorageType, safe_unpickle

FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)
MEMORY_BOUND = 64 << 20


def storage(pid: object) -> StorageRef:
    if isinstance(pid, tuple) and len(pid) >= 5 and isinstance(pid[1], StorageType) and isinstance(pid[4], int):
        return StorageRef(pid[1].dtype, str(pid[2]), max(0, pid[4]))
    raise CheckpointFileError("bad persistent id")


def unpickle_within_bounds(data: bytes) -> None:
    """Unpickle; only CheckpointFileError may escape; no module is imported; memory stays bounded."""
    modules = set(sys.modules)
    tracemalloc.start()
    try:
        safe_unpickle(data, storage)
    except CheckpointFileError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"{peak:,} bytes for a {len(data):,}-byte pickle"
    assert set(sys.modules) == modules  # nothing the pickle named was imported


@pytest.fixture(scope="module")
def real_pickle() -> bytes:
    """data.pkl of a real torch.save: what mutations start from."""
    state = OrderedDict(
        w=torch.randn(3, 4), b=torch.zeros(4).half(), view=torch.arange(12.0).reshape(3, 4).t(), n=torch.tensor(7)
    )
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "global_step": 10, "epoch": 1}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        return archive.read(name)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    unpickle_within_bounds(data)


# Opcode snippets a checkpoint pickle is made of, and some it must never get away with.
SNIPPETS = [
    b"(",
    b")",
    b"]",
    b"}",
    b"t",
    b"\x85",
    b"\x86",
    b"\x87",
    b"a",
    b"e",
    b"s",
    b"u",
    b"l",
    b"d",
    b"0",
    b"1",
    b"2",
    b"N",
    b"\x88",
    b"\x89",
    b"K\x07",
    b"J\xff\xff\xff\xff",
    b"\x8a\x01\x05",
    b"G\x3f\xf0\x00\x00\x00\x00\x00\x00",
    b"X\x01\x00\x00\x00k",
    b"\x8c\x03abc",
    b"C\x02hi",
    b"q\x00",
    b"q\x01",
    b"h\x00",
    b"h\x01",
    b"\x94",
    b"b",
    b"R",
    b"Q",
    b"\x81",
    b"\x8f",
    b"\x90",
    b"\x91",
    b"ccollections\nOrderedDict\n",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ctorch\nFloatStorage\n",
    b"cbuiltins\nset\n",
    b"cnumpy\ndtype\n",
    b"c_codecs\nencode\n",
    b"cos\nsystem\n",
    b"cbuiltins\neval\n",
    b"csubprocess\ncall\n",
    b"c__builtin__\ngetattr\n",
    b"\x8c\x02os\x8c\x06system\x93",
]


@FUZZ
@given(st.lists(st.sampled_from(SNIPPETS), max_size=120))
def test_opcode_sequences(parts: list[bytes]) -> None:
    unpickle_within_bounds(b"\x80\x02" + b"".join(parts) + b".")


@FUZZ
@given(data=st.data())
def test_mutated_real_pickle(real_pickle: bytes, data: st.DataObject) -> None:
    blob = bytearray(real_pickle)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(blob) - 1))
        kind = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if kind == "set":
            blob[position] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            blob[position:position] = data.draw(st.sampled_from(SNIPPETS))
        else:
            del blob[position : position + data.draw(st.integers(1, 16))]
    unpickle_within_bounds(bytes(blob))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_mutated_checkpoint_archives(real_pickle: bytes, data: st.DataObject) -> None:
    """The whole reader (zip, members, pickle, extents) on archives with a mutated pickle or storage."""
    blob = bytearray(real_pickle)
    for _ in range(data.draw(st.integers(0, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    storage_size = data.draw(st.sampled_from([0, 8, 48, 64]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.ckpt"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", bytes(blob))
            for key in range(4):
                archive.writestr(f"archive/data/{key}", bytes(storage_size))
        try:
            checkpoint = read_pickle_checkpoint(path)
        except CheckpointFileError:
            return
        assert checkpoint.tensors and all(isinstance(name, str) for name in checkpoint.tensors)


# --- safetensors headers ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
tensor_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "F8_E4M3", "X9"]),
        "shape": st.lists(st.integers(-2, 6), max_size=4),
        "data_offsets": st.lists(st.integers(-4, 300), min_size=0, max_size=3),
    }
)
headers = st.dictionaries(
    st.text(max_size=12),
    tensor_entries | json_values,
    max_size=6,
).map(lambda h: h)


def read_within_bounds(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.safetensors"
        path.write_bytes(raw)
        try:
            header = read_header(path)
        except CheckpointFileError as e:
            assert "\n" not in str(e)
            return
        # Whatever was accepted is consistent, printable and storable.
        assert header.data_start + sum(t.nbytes for t in header.tensors.values()) == len(raw)
        json.dumps(header.metadata, ensure_ascii=False).encode("utf-8")


@FUZZ
@given(
    headers, st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3) | json_values, st.integers(0, 600)
)
def test_generated_headers(header: dict, metadata: object, data_size: int) -> None:
    if metadata is not None:
        header = {**header, "__metadata__": metadata}
    encoded = json.dumps(header).encode("utf-8", "surrogatepass")
    read_within_bounds(struct.pack("<Q", len(encoded)) + encoded + bytes(data_size))


@FUZZ
@given(st.binary(max_size=600))
def test_random_files(raw: bytes) -> None:
    read_within_bounds(raw)


@FUZZ
@given(data=st.data())
def test_mutated_valid_file(data: st.DataObject) -> None:
    header = {
        "__metadata__": {"modelspec.title": "t"},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
    }
    encoded = json.dumps(header).encode()
    blob = bytearray(struct.pack("<Q", len(encoded)) + encoded + bytes(32))
    for _ in range(data.draw(st.integers(1, 6))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    read_within_bounds(bytes(blob))


def test_pickle_from_the_standard_library_round_trips_plain_data() -> None:
    """The interpreter agrees with pickle on what it allows (so the fuzzing above tests a real reader)."""
    value = {"a": [1, 2.5, "x", None, True], "b": (b"raw", -7, 2**70), "c": {"nested": [[], {}]}}
    for protocol in range(2, 6):
        assert safe_unpickle(pickle.dumps(value, protocol=protocol)) == value
