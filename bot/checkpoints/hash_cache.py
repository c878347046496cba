"""Hashes kept by (path, size, mtime) in the database, so a file is read in full only when it changed.
The hashes themselves: common/hashing.py."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from bot.db import transaction
from common.hashing import FileHashes


@dataclass(frozen=True)
class FileStamp:
    """What must be unchanged for a cached hash to still hold."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = os.stat(path)
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns)


class HashCache:
    """Hashes keyed by (path, size, mtime) in the hash_cache table."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def get(self, stamp: FileStamp) -> FileHashes | None:
        async with self._db.execute(
            "SELECT sha256, autov1 FROM hash_cache WHERE path = ? AND size = ? AND mtime_ns = ?",
            (stamp.path, stamp.size, stamp.mtime_ns),
        ) as cur:
            row = await cur.fetchone()
        return FileHashes(sha256=row[0], autov1=row[1]) if row else None

    async def put(self, stamp: FileStamp, hashes: FileHashes) -> None:
        async with transaction(self._db) as db:
            await db.execute(
                "INSERT INTO hash_cache (path, size, mtime_ns, sha256, autov1, hashed_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "sha256 = excluded.sha256, autov1 = excluded.autov1, hashed_at = excluded.hashed_at",
                (stamp.path, stamp.size, stamp.mtime_ns, hashes.sha256, hashes.autov1, time.time()),
            )
