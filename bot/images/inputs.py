"""Inputs kept by content hash in the data directory, so a job can be run again from them: pictures
that jobs start from (.png), and pictures' parameters that "Make this here" runs (.txt)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from bot.checkpoints.safetensors_writer import temp_path
from bot.errors import EaselError


class InputStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

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
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise EaselError(
                "the picture this job started from is no longer kept"
                if suffix == ".png"
                else "those parameters are no longer kept"
            ) from None

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists():
            return  # the same content under the same name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
