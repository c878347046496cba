"""Hashes match A1111/Civitai definitions; the cache is keyed by (path, size, mtime)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bot.checkpoints.hash_cache import FileStamp, HashCache
from bot.db import open_database
from common import hashing
from common.hashing import autov1, hash_file


def a1111_model_hash(path: Path) -> str:
    """modules/hashes.py `model_hash` from the A1111 WebUI, verbatim in substance."""
    with open(path, "rb") as file:
        m = hashlib.sha256()
        file.seek(0x100000)
        m.update(file.read(0x10000))
        return m.hexdigest()[0:8]


def test_sha256_and_autov2(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(3 * hashing.CHUNK + 12345)
    path.write_bytes(data)
    hashes = hash_file(path)
    assert hashes.sha256 == hashlib.sha256(data).hexdigest()
    assert hashes.autov2 == hashes.sha256[:10]


def test_autov1_matches_a1111_for_large_files_and_is_absent_for_small(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    assert autov1(big) == a1111_model_hash(big)
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom((2 << 20) - 1))
    assert autov1(small) is None


def test_progress_reports_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(hashing.CHUNK * 2 + 7))
    seen: list[int] = []
    hashing.sha256_file(path, seen.append)
    assert sum(seen) == path.stat().st_size


async def test_cache_hits_until_the_file_changes(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "db.sqlite3")
    try:
        cache = HashCache(db)
        path = tmp_path / "f.bin"
        path.write_bytes(b"one")
        stamp = FileStamp.of(path)
        assert await cache.get(stamp) is None
        await cache.put(stamp, hash_file(path))
        assert (await cache.get(FileStamp.of(path))).sha256 == hashlib.sha256(b"one").hexdigest()
        path.write_bytes(b"two!")  # new size and mtime: the old entry must not answer
        assert await cache.get(FileStamp.of(path)) is None
    finally:
        await db.close()


async def test_registry_hashes_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.checkpoints.registry import CheckpointRegistry

    calls: list[Path] = []
    real = hashing.hash_file

    def counting(path: Path, progress=None):
        calls.append(path)
        return real(path, progress)

    monkeypatch.setattr("bot.checkpoints.registry.hash_file", counting)
    db = await open_database(tmp_path / "db.sqlite3")
    try:
        registry = CheckpointRegistry(db, tmp_path)
        path = tmp_path / "f.bin"
        path.write_bytes(b"x" * 100)
        first = await registry.hashes(path)
        second = await registry.hashes(path)
        assert first == second and len(calls) == 1
        os.utime(path, ns=(1, 1))
        await registry.hashes(path)
        assert len(calls) == 2
    finally:
        await db.close()
