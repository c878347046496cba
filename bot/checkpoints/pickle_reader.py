"""Read PyTorch .ckpt / .pt files without running anything they contain, and without torch.

A checkpoint saved by torch.save is a zip archive whose `data.pkl` is a pickle. Unpickling with
the standard machinery can call any importable function the file names. This reader resolves
every global the pickle asks for against an allow-list (after A1111's modules/safe.py) and hands
back inert stand-ins of our own, so the pickle can only build dicts, lists, numbers, strings and
descriptors of tensors. Tensor data is never loaded here; `tensor_bytes` reads one on demand.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.checkpoints.tensors import DTYPE_SIZES, TensorInfo
from bot.errors import CheckpointFileError

# torch storage class name -> safetensors dtype name
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "UntypedStorage": "U8",
}

# Members a torch.save zip archive may hold, all under one top-level folder.
_MEMBER = re.compile(
    r"^(?P<prefix>[^/]+)/(?:data\.pkl|version|byteorder|\.format_version|\.storage_alignment"
    r"|\.data/serialization_id|\.data/version|data/(?P<key>\d+))$"
)

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class StorageType:
    dtype: str


@dataclass(frozen=True)
class StorageRef:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True)
class PickledTensor(TensorInfo):
    storage: StorageRef | None = None
    offset: int = 0
    stride: tuple[int, ...] = ()

    @property
    def is_contiguous(self) -> bool:
        expected, step = [], 1
        for dim in reversed(self.shape):
            expected.append(step)
            step *= dim
        return self.numel <= 1 or tuple(reversed(expected)) == self.stride


class Opaque:
    """Stands in for an allowed, irrelevant object (a Lightning callback, a numpy scalar)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args = args

    def __setstate__(self, state: object) -> None:
        self.state = state


def _rebuild_tensor_v2(
    storage: StorageRef,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_: object,
) -> PickledTensor:
    if not isinstance(storage, StorageRef):
        raise CheckpointFileError("a tensor in the pickle does not refer to a storage")
    return PickledTensor(
        name="", dtype=storage.dtype, shape=tuple(size), storage=storage, offset=storage_offset, stride=tuple(stride)
    )


def _rebuild_parameter(data: object, *_: object) -> object:
    return data


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # numpy scalars pickle their raw bytes as latin-1 text; only plain encodings are honoured.
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise CheckpointFileError(f"pickle asks for the {encoding!r} codec, which is not allowed")
    return text.encode(encoding)


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type | StorageType] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.nn.modules.container", "ParameterDict"): dict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy.core.multiarray", "scalar"): Opaque,
    ("numpy._core.multiarray", "scalar"): Opaque,
    ("numpy", "dtype"): Opaque,
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"): Opaque,
    **{("torch", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointFileError(
                f"unsafe pickle: it asks for {module}.{name}, which is not on the allow-list; nothing was run"
            ) from None

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointFileError("pickle refers to an unknown kind of persistent object")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType) or not isinstance(numel, int):
            raise CheckpointFileError("pickle refers to a storage of an unknown type")
        return StorageRef(dtype=storage_type.dtype, key=str(key), numel=numel)


def safe_unpickle(data: bytes) -> Any:
    try:
        return _AllowListUnpickler(io.BytesIO(data)).load()
    except CheckpointFileError:
        raise
    except Exception as e:  # malformed pickles raise anything from EOFError to TypeError
        raise CheckpointFileError(f"pickle is malformed: {type(e).__name__}: {e}") from None


@dataclass
class PickleCheckpoint:
    """What a torch zip checkpoint holds: tensor descriptors and its scalar extras."""

    path: Path
    prefix: str
    tensors: dict[str, PickledTensor]
    extras: dict[str, object] = field(default_factory=dict)

    def tensor_bytes(self, tensor: PickledTensor, archive: zipfile.ZipFile) -> bytes:
        """The tensor's elements in C order, as raw little-endian bytes."""
        assert tensor.storage is not None
        raw = archive.read(f"{self.prefix}/data/{tensor.storage.key}")
        size = DTYPE_SIZES[tensor.dtype]
        if tensor.is_contiguous:
            return raw[tensor.offset * size : (tensor.offset + tensor.numel) * size]
        import numpy as np  # only for the rare non-contiguous view

        view = np.frombuffer(raw, dtype=np.dtype(f"V{size}"))
        strided = np.lib.stride_tricks.as_strided(
            view[tensor.offset :], shape=tensor.shape, strides=[s * size for s in tensor.stride]
        )
        return np.ascontiguousarray(strided).tobytes()


def read_pickle_checkpoint(path: Path) -> PickleCheckpoint:
    """Inspect a .ckpt/.pt file through the allow-list; raise CheckpointFileError if unsafe or malformed."""
    if path.stat().st_size == 0:
        raise CheckpointFileError("file is empty")
    if not zipfile.is_zipfile(path):
        _refuse_non_zip(path)
    try:
        with zipfile.ZipFile(path) as archive:
            prefix, storages = _check_members(archive)
            root = safe_unpickle(archive.read(f"{prefix}/data.pkl"))
    except zipfile.BadZipFile as e:
        raise CheckpointFileError(f"damaged zip archive: {e}") from None
    state, extras = _find_state_dict(root)
    tensors: dict[str, PickledTensor] = {}
    for name, value in state.items():
        if isinstance(value, PickledTensor):
            _check_extent(name, value, storages)
            tensors[str(name)] = PickledTensor(
                name=str(name),
                dtype=value.dtype,
                shape=value.shape,
                storage=value.storage,
                offset=value.offset,
                stride=value.stride,
            )
    if not tensors:
        raise CheckpointFileError("the checkpoint holds no tensors")
    return PickleCheckpoint(path=path, prefix=prefix, tensors=tensors, extras=extras)


def _refuse_non_zip(path: Path) -> None:
    # A legacy (pre-1.6) torch file starts with a pickled magic number; read just that pickle.
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    first = safe_unpickle(head) if head[:1] == b"\x80" else None
    if first == _LEGACY_MAGIC:
        raise CheckpointFileError(
            "legacy PyTorch format (saved before torch 1.6) is not supported; re-save it with a current torch"
        )
    raise CheckpointFileError("not a PyTorch checkpoint (expected a torch.save zip archive)")


def _check_members(archive: zipfile.ZipFile) -> tuple[str, dict[str, int]]:
    prefixes: set[str] = set()
    storages: dict[str, int] = {}
    for info in archive.infolist():
        match = _MEMBER.match(info.filename)
        if match is None:
            raise CheckpointFileError(f"unexpected member {info.filename!r} in the checkpoint archive")
        prefixes.add(match["prefix"])
        if match["key"] is not None:
            storages[match["key"]] = info.file_size
    if len(prefixes) != 1:
        raise CheckpointFileError("checkpoint archive mixes several top-level folders")
    prefix = prefixes.pop()
    if f"{prefix}/data.pkl" not in archive.namelist():
        raise CheckpointFileError("checkpoint archive has no data.pkl")
    return prefix, storages


def _find_state_dict(root: object) -> tuple[dict, dict[str, object]]:
    if not isinstance(root, dict):
        raise CheckpointFileError(f"checkpoint holds a {type(root).__name__}, not a dict of tensors")
    state = root
    while isinstance(state.get("state_dict"), dict):  # Lightning nests it, sometimes twice
        state = state["state_dict"]
    extras = {k: v for k, v in root.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return state, extras


def _check_extent(name: object, tensor: PickledTensor, storages: dict[str, int]) -> None:
    assert tensor.storage is not None
    stored = storages.get(tensor.storage.key)
    size = DTYPE_SIZES[tensor.dtype]
    if stored is None:
        raise CheckpointFileError(f"tensor {name!r} refers to storage {tensor.storage.key}, which is missing")
    if stored != tensor.storage.numel * size:
        raise CheckpointFileError(
            f"storage {tensor.storage.key} holds {stored:,} bytes, not the {tensor.storage.numel * size:,} declared"
        )
    if len(tensor.stride) != len(tensor.shape) or any(s < 0 for s in tensor.stride):
        raise CheckpointFileError(f"tensor {name!r} has an invalid stride")
    last = (
        tensor.offset + sum((d - 1) * s for d, s in zip(tensor.shape, tensor.stride, strict=True))
        if math.prod(tensor.shape)
        else -1
    )
    if tensor.offset < 0 or last >= tensor.storage.numel:
        raise CheckpointFileError(f"tensor {name!r} points past the end of its storage")
