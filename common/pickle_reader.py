"""Read PyTorch .ckpt / .pt files without running anything they contain, and without torch.

A checkpoint saved by torch.save is a zip archive whose `data.pkl` is a pickle. Unpickling with
the standard machinery can call any importable function the file names. This reader resolves
every global the pickle asks for against an allow-list (after A1111's modules/safe.py) and hands
back inert stand-ins of our own, so the pickle can only build dicts, lists, numbers, strings and
descriptors of tensors. Tensor data is never loaded here; `tensor_bytes` reads one on demand.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import CheckpointFileError
from common.safe_pickle import (
    MAX_PICKLE_BYTES,
    STORAGE_DTYPES,
    Allowed,
    PickledTensor,
    StorageRef,
    StorageType,
    safe_unpickle,
)
from common.tensors import DTYPE_SIZES
from common.upscaler_detection import state_dict_of

__all__ = ["STORAGE_DTYPES", "PickleCheckpoint", "PickledTensor", "read_pickle_checkpoint", "safe_unpickle"]

# Members a torch.save zip archive may hold, all under one top-level folder.
_MEMBER = re.compile(
    r"^(?P<prefix>[^/]+)/(?:data\.pkl|version|byteorder|\.format_version|\.storage_alignment"
    r"|\.data/serialization_id|\.data/version|data/(?P<key>\d+))$"
)
_SMALL_MEMBER_BYTES = 4096  # version, byteorder and the like hold a few bytes
# torch.save stores members uncompressed; a re-zipped checkpoint deflates tensor data ~1.1x.
# Past this ratio a member is a decompression bomb, not a checkpoint.
MAX_COMPRESSION_RATIO = 100

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _storage(pid: object) -> StorageRef:
    """torch.save's persistent id for a storage: ('storage', type, key, location, numel)."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise CheckpointFileError("pickle refers to an unknown kind of persistent object")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, StorageType):
        raise CheckpointFileError("pickle refers to a storage of an unknown type")
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise CheckpointFileError("pickle refers to a storage with an invalid size")
    if not isinstance(key, str | int) or isinstance(key, bool) or not str(key).isdigit():
        raise CheckpointFileError("pickle refers to a storage with an invalid key")
    return StorageRef(dtype=storage_type.dtype, key=str(key), numel=numel)


@dataclass
class PickleCheckpoint:
    """What a torch zip checkpoint holds: tensor descriptors and its scalar extras."""

    path: Path
    prefix: str
    tensors: dict[str, PickledTensor]
    extras: dict[str, object] = field(default_factory=dict)

    def reader(self, archive: zipfile.ZipFile) -> StorageReader:
        return StorageReader(archive, self.prefix)


class StorageReader:
    """Tensor bytes from an open archive. Each storage is decompressed once, however many views it has:
    ask for tensors grouped by storage (`by_storage`) and only one storage is held at a time."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        self._archive = archive
        self._prefix = prefix
        self._key: str | None = None
        self._raw = b""

    def _storage(self, storage: StorageRef) -> bytes:
        if storage.key != self._key:
            self._raw = b""  # let the previous storage go before reading the next
            expected = storage.numel * DTYPE_SIZES[storage.dtype]
            with self._archive.open(f"{self._prefix}/data/{storage.key}") as member:
                raw = member.read(expected + 1)
            if len(raw) != expected:
                raise CheckpointFileError(
                    f"storage {storage.key} holds {len(raw):,} bytes, not the {expected:,} declared"
                )
            self._key, self._raw = storage.key, raw
        return self._raw

    def tensor_bytes(self, tensor: PickledTensor) -> bytes:
        """The tensor's elements in C order, as raw little-endian bytes."""
        assert tensor.storage is not None
        raw = self._storage(tensor.storage)
        size = DTYPE_SIZES[tensor.dtype]
        if tensor.is_contiguous:
            return raw[tensor.offset * size : (tensor.offset + tensor.numel) * size]
        import numpy as np  # only for the rare non-contiguous view

        view = np.frombuffer(raw, dtype=np.dtype(f"V{size}"))
        strided = np.lib.stride_tricks.as_strided(
            view[tensor.offset :], shape=tensor.shape, strides=[s * size for s in tensor.stride]
        )
        return np.ascontiguousarray(strided).tobytes()


def by_storage(tensors: dict[str, PickledTensor]) -> list[PickledTensor]:
    """Tensors ordered so that views of one storage come together (then by name)."""
    return sorted(tensors.values(), key=lambda t: (int(t.storage.key) if t.storage else -1, t.name))


def read_pickle_checkpoint(path: Path) -> PickleCheckpoint:
    """Inspect a .ckpt/.pt file through the allow-list; raise CheckpointFileError if unsafe or malformed."""
    prefix, storages, root = read_pickle_root(path)
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
    _check_expansion(tensors)
    return PickleCheckpoint(path=path, prefix=prefix, tensors=tensors, extras=extras)


def read_pickle_root(
    path: Path, extra_globals: Callable[[str, str], Allowed | None] | None = None
) -> tuple[str, dict[str, int], object]:
    """A torch zip archive's folder name, its storages' sizes, and what its pickle describes (stand-ins
    only); CheckpointFileError if the archive or its pickle is unsafe or malformed."""
    if path.stat().st_size == 0:
        raise CheckpointFileError("file is empty")
    if not zipfile.is_zipfile(path):
        _refuse_non_zip(path)
    try:
        with zipfile.ZipFile(path) as archive:
            prefix, storages = _check_members(archive)
            with archive.open(f"{prefix}/data.pkl") as member:
                data = member.read(MAX_PICKLE_BYTES + 1)
            root = safe_unpickle(data, _storage, extra_globals)
    except zipfile.BadZipFile as e:
        raise CheckpointFileError(f"damaged zip archive: {e}") from None
    except (zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as e:
        raise CheckpointFileError(f"the zip archive cannot be read: {e}") from None
    return prefix, storages, root


def checked_tensors(tensors: dict[str, PickledTensor], storages: dict[str, int]) -> dict[str, PickledTensor]:
    """Named tensors whose views stay inside their storages and do not repeat data beyond bounds."""
    out = {}
    for name, value in tensors.items():
        _check_extent(name, value, storages)
        out[name] = PickledTensor(
            name=name, dtype=value.dtype, shape=value.shape, storage=value.storage, offset=value.offset, stride=value.stride
        )
    if out:
        _check_expansion(out)
    return out


def _check_expansion(tensors: dict[str, PickledTensor]) -> None:
    """Views may share storage (tied weights), but may not describe far more data than is stored:
    a stride-0 view of one number as a billion-element tensor would turn a small file into a huge one."""
    stored = {t.storage.key: t.storage.numel * DTYPE_SIZES[t.storage.dtype] for t in tensors.values() if t.storage}
    described = sum(t.nbytes for t in tensors.values())
    allowed = 2 * sum(stored.values()) + (16 << 20)
    if described > allowed:
        raise CheckpointFileError(
            f"its tensors describe {described:,} bytes but the file stores only {sum(stored.values()):,} "
            "(views that repeat data); refused"
        )


def _refuse_non_zip(path: Path) -> None:
    # A legacy (pre-1.6) torch file starts with a pickled magic number; read just that pickle.
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    # The magic number is a pickle of its own; the interpreter stops at its STOP.
    first = safe_unpickle(head) if head[:1] == b"\x80" else None
    if first == _LEGACY_MAGIC:
        raise CheckpointFileError(
            "legacy PyTorch format (saved before torch 1.6) is not supported; re-save it with a current torch"
        )
    raise CheckpointFileError("not a PyTorch checkpoint (expected a torch.save zip archive)")


def _check_members(archive: zipfile.ZipFile) -> tuple[str, dict[str, int]]:
    prefixes: set[str] = set()
    storages: dict[str, int] = {}
    seen: set[str] = set()
    for info in archive.infolist():
        match = _MEMBER.match(info.filename)
        if match is None:
            raise CheckpointFileError(f"unexpected member {info.filename[:200]!r} in the checkpoint archive")
        if info.filename in seen:
            raise CheckpointFileError(f"the checkpoint archive holds {info.filename[:200]!r} twice")
        seen.add(info.filename)
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(
            info.compress_size * MAX_COMPRESSION_RATIO, 1 << 16
        ):
            raise CheckpointFileError(
                f"member {info.filename[:200]!r} inflates {info.compress_size:,} bytes to {info.file_size:,}: "
                "a decompression bomb, not a checkpoint"
            )
        prefixes.add(match["prefix"])
        if match["key"] is not None:
            storages[match["key"]] = info.file_size
        elif info.filename.endswith("/data.pkl"):
            if info.file_size > MAX_PICKLE_BYTES:
                raise CheckpointFileError(
                    f"data.pkl is {info.file_size:,} bytes, over the {MAX_PICKLE_BYTES:,}-byte limit for a checkpoint's pickle"
                )
        elif info.file_size > _SMALL_MEMBER_BYTES:
            raise CheckpointFileError(f"member {info.filename[:200]!r} is {info.file_size:,} bytes; expected a few")
    if len(prefixes) != 1:
        raise CheckpointFileError("checkpoint archive mixes several top-level folders")
    prefix = prefixes.pop()
    if f"{prefix}/data.pkl" not in seen:
        raise CheckpointFileError("checkpoint archive has no data.pkl")
    return prefix, storages


def _find_state_dict(root: object) -> tuple[dict, dict[str, object]]:
    if not isinstance(root, dict):
        raise CheckpointFileError(f"checkpoint holds a {type(root).__name__}, not a dict of tensors")
    state = root
    while isinstance(state.get("state_dict"), dict):  # Lightning nests it, sometimes twice
        state = state["state_dict"]
    state = dict(state_dict_of(state))  # an upscaler saved by BasicSR / Real-ESRGAN
    if isinstance(state.get("string_to_param"), dict):  # an A1111 textual-inversion embedding
        state = {f"string_to_param.{k}": v for k, v in state["string_to_param"].items()}
    if isinstance(state.get("image_proj"), dict) and isinstance(state.get("ip_adapter"), dict):  # h94's IP-Adapter .bin
        state = {f"{part}.{k}": v for part in ("image_proj", "ip_adapter") for k, v in state[part].items()}
    extras = {
        str(k): v
        for k, v in root.items()
        if isinstance(v, int | float | str) and not isinstance(v, bool) and (not isinstance(v, str) or len(v) <= 1000)
    }
    return state, extras


def _check_extent(name: object, tensor: PickledTensor, storages: dict[str, int]) -> None:
    assert tensor.storage is not None
    stored = storages.get(tensor.storage.key)
    size = DTYPE_SIZES[tensor.dtype]
    if stored is None:
        raise CheckpointFileError(
            f"tensor {str(name)[:200]!r} refers to storage {tensor.storage.key}, which is missing"
        )
    if stored != tensor.storage.numel * size:
        raise CheckpointFileError(
            f"storage {tensor.storage.key} holds {stored:,} bytes, not the {tensor.storage.numel * size:,} declared"
        )
    last = (
        tensor.offset + sum((d - 1) * s for d, s in zip(tensor.shape, tensor.stride, strict=True))
        if math.prod(tensor.shape)
        else -1
    )
    if last >= tensor.storage.numel:
        raise CheckpointFileError(f"tensor {str(name)[:200]!r} points past the end of its storage")
