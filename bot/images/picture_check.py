"""The picture check for pictures no job made: previews shipped beside models (`NAME.preview.png`).

Jobs' pictures are scored in the GPU worker before they leave it. A model's preview is a file on the
host's disk that anyone may have put there (a download, an archive), so before it is shown where the
check decides anything it is scored by the same detector, in the worker package's one-shot
`safety-check` process (the bot process never loads the detector). Scores are remembered by the
picture's sha256: a preview is scored once per bot run, however often it is asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.images.uploads import UploadError, read_upload
from bot.rules.policy import readable_score
from common.errors import EaselError

log = logging.getLogger(__name__)

REMEMBERED = 1024  # scores kept, most recently asked last
CHECK_SECONDS = 120.0  # the detector's first load included; past it the picture counts as unchecked

ScoreTool = Callable[[Path], Awaitable[str]]


async def _worker_tool(png: Path) -> str:
    from bot.worker_tools import run_worker_tool

    return await run_worker_tool("safety-check", str(png))


class PictureCheck:
    def __init__(self, tool: ScoreTool = _worker_tool) -> None:
        self._tool = tool
        self._scores: OrderedDict[str, float] = OrderedDict()
        self._lock = asyncio.Lock()  # one detector process at a time

    async def score(self, picture: bytes) -> float | None:
        """The picture's score (0-1); None when it could not be checked: not a picture that reads
        safely, or the check failed. Callers treat None as over every threshold."""
        key = hashlib.sha256(picture).hexdigest()
        async with self._lock:
            if key in self._scores:
                self._scores.move_to_end(key)
                return self._scores[key]
            score = await self._check(key, picture)
            if score is not None:  # a failed check is tried again next time
                self._remember(key, score)
            return score

    async def _check(self, key: str, picture: bytes) -> float | None:
        try:
            upload = await asyncio.to_thread(read_upload, picture)  # re-encoded, as every upload is
        except UploadError as e:
            log.warning("picture %s not checked: %s", key[:12], e)
            return None
        with tempfile.TemporaryDirectory(prefix="easel-check-") as folder:
            png = Path(folder) / "picture.png"
            await asyncio.to_thread(png.write_bytes, upload.png)
            try:
                report = json.loads(await asyncio.wait_for(self._tool(png), CHECK_SECONDS))
            except (EaselError, TimeoutError, ValueError) as e:
                log.warning("picture %s not checked: the picture check failed: %s", key[:12], e)
                return None
        score = readable_score(report.get("score") if isinstance(report, dict) else None)
        log.info("picture %s checked: score %s", key[:12], "unreadable" if score is None else f"{score:.2f}")
        return score

    def _remember(self, key: str, score: float) -> None:
        self._scores[key] = score
        while len(self._scores) > REMEMBERED:
            self._scores.popitem(last=False)
