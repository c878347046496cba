"""Inputs kept by content hash in the data directory, so a job can be run again from them: pictures
that jobs start from (.png), and pictures' parameters that "Make this here" runs (.txt).

Anyone may upload, so the folder is capped: past `max_bytes` the least recently used inputs go
(a rerun of their jobs then says the picture is no longer kept) — uploads cannot fill the disk."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from common.errors import EaselError
from common.safetensors_writer import temp_path

DEFAULT_MAX_BYTES = 2 << 30


class InputStore:
    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def _path(self, sha256: str, suffix: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256) or suffix not in (".png", ".txt"):
            raise EaselError("not a kept input's hash")
        return self.folder / f"{sha256}{suffix}"

    async def put(self, sha256: str, data: bytes, suffix: str = ".png") -> None:
        path = self._path(sha256, suffix)
        await asyncio.to_thread(self._write, path, data)

    async def get(self, sha256: str, suffix: str = ".png") -> bytes:
        path = self._path(sha256, suffix)
        try:
            data = await asyncio.to_thread(path.read_bytes)
            await asyncio.to_thread(os.utime, path)  # used again: the last to go when room is needed
            return data
        except FileNotFoundError:
            raise EaselError(
                "the picture this job started from is no longer kept"
                if suffix == ".png"
                else "those parameters are no longer kept"
            ) from None

    def _write(self, path: Path, data: bytes) -> None:
        if path.exists():
            os.utime(path)
            return  # the same content under the same name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._make_room(keep=path)

    def _make_room(self, keep: Path) -> None:
        """Drop the least recently used inputs until the folder is within its cap (never `keep`)."""
        files = []
        for entry in os.scandir(self.folder):
            if entry.is_file(follow_symlinks=False) and entry.name.endswith((".png", ".txt")):
                stat = entry.stat(follow_symlinks=False)
                files.append((stat.st_mtime_ns, stat.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size
