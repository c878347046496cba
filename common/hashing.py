"""Checkpoint hashes as A1111 and Civitai know them.

sha256 of the whole file is Easel's identity for a checkpoint; AutoV2 is its first 10 hex digits;
the legacy AutoV1 is the sha256 of 0x10000 bytes at offset 0x100000, first 8 hex digits (only for
files of at least 2 MiB). Hashing streams the file once with a reusable buffer; results are
cached by the bot (bot/checkpoints/hash_cache.py) so a file is read in full only when it changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

CHUNK = 8 << 20
AUTOV1_OFFSET = 0x100000
AUTOV1_LENGTH = 0x10000
AUTOV1_MIN_SIZE = 2 << 20


@dataclass(frozen=True)
class FileHashes:
    sha256: str
    autov1: str | None

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    def to_dict(self) -> dict[str, str | None]:
        return {**asdict(self), "autov2": self.autov2}


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            if progress is not None:
                progress(n)
    return digest.hexdigest()


def autov1(path: Path) -> str | None:
    if path.stat().st_size < AUTOV1_MIN_SIZE:
        return None
    with open(path, "rb") as f:
        f.seek(AUTOV1_OFFSET)
        return hashlib.sha256(f.read(AUTOV1_LENGTH)).hexdigest()[:8]


def addnet_hash(path: Path) -> str:
    """A1111's LoRA hash (modules/hashes.py `addnet_hash_safetensors`): the sha256 of the bytes after a
    safetensors file's header, so that rewriting the metadata keeps it. Its first 12 hex digits are
    the short hash that `Lora hashes` in an infotext carries. For a file already vetted as safetensors.
    """
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> FileHashes:
    return FileHashes(sha256=sha256_file(path, progress), autov1=autov1(path))
