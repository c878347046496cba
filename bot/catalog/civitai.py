"""Civitai lookups by file hash, with a dated cache of answers (misses too).

`GET /api/v1/model-versions/by-hash/{sha256}` answers with the model version a file belongs to:
base model, trained words, the model's name, type, tags and NSFW flag. A 404 means Civitai does not
know the file; that is cached as a miss, so private merges are not asked about again and again.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import httpx

from bot import outbound
from bot.db import transaction
from bot.errors import EaselError
from bot.untrusted import load_json

log = logging.getLogger(__name__)

CIVITAI_URL = "https://civitai.com"
MAX_ANSWER_BYTES = 4 << 20
STALE_AFTER_SECONDS = 30 * 86400


class CivitaiError(EaselError):
    """Civitai could not be asked (no network, an error status, a malformed answer)."""


def _strip_html(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()


def parse_version(data: dict[str, Any]) -> dict[str, Any]:
    """The parts of a model-version object the catalog uses: an API answer, or an A1111
    extension's NAME.civitai.info file (the same JSON saved beside the checkpoint)."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    return {
        "model_id": _id(data.get("modelId")),
        "version_id": _id(data.get("id")),
        "model_name": str(model.get("name") or ""),
        "version_name": str(data.get("name") or ""),
        "type": str(model.get("type") or ""),
        "base_model": str(data.get("baseModel") or ""),
        "trained_words": [w for w in data.get("trainedWords") or [] if isinstance(w, str)],
        "tags": [t for t in model.get("tags") or [] if isinstance(t, str)],
        "nsfw": bool(model.get("nsfw")),
        "checkpoint_type": str(model.get("checkpointType") or data.get("checkpointType") or ""),
        "description": _strip_html(str(data.get("description") or model.get("description") or "")),
        **_figures(data),
    }


def _figures(data: dict[str, Any]) -> dict[str, Any]:
    """A version's public figures (its `stats`) and publication date, where the answer has them: the
    catalog's currency signal. Anything not a plain count or an ISO date is left out."""
    stats = data.get("stats") if isinstance(data.get("stats"), dict) else {}
    figures: dict[str, Any] = {}
    for key, name in (("downloadCount", "downloads"), ("thumbsUpCount", "thumbs_up")):
        value = _id(stats.get(key))
        if value is not None:
            figures[name] = value
    published = data.get("publishedAt") or data.get("createdAt")
    if isinstance(published, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", published[:40]):
        figures["published"] = published[:10]
    return figures


def _id(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63 else None


def read_answer(response: httpx.Response) -> Any:
    """An API answer's JSON through the untrusted-JSON rules; CivitaiError if it is not JSON we can keep."""
    if len(response.content) > MAX_ANSWER_BYTES:
        raise CivitaiError(f"Civitai's answer is {len(response.content):,} bytes; expected a small JSON object")
    try:
        return load_json(response.content)
    except ValueError as e:
        raise CivitaiError(f"Civitai's answer is not usable JSON ({e})") from None


class CivitaiClient:
    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = CIVITAI_URL,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "Easel (Discord bot)"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = outbound.client(
            outbound.Policy(),
            base_url=base_url,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(15.0, connect=5.0),
        )

    async def by_hash(self, sha256: str) -> dict[str, Any] | None:
        """The version's facts, or None when Civitai does not know the file."""
        try:
            response = await self._client.get(f"/api/v1/model-versions/by-hash/{sha256}")
        except httpx.HTTPError as e:
            raise CivitaiError(f"Civitai could not be reached ({type(e).__name__}: {e})") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise CivitaiError(f"Civitai answered HTTP {response.status_code}")
        data = read_answer(response)
        if not isinstance(data, dict) or "modelId" not in data:
            raise CivitaiError("Civitai's answer is not a model version")
        return parse_version(data)

    async def close(self) -> None:
        await self._client.aclose()


@dataclass
class EnrichReport:
    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    cached: int = 0
    error: str | None = None  # why the lookups stopped, if they did

    def summary(self) -> str:
        parts = [f"{len(self.found)} found on Civitai", f"{len(self.missing)} unknown there", f"{self.cached} cached"]
        text = ", ".join(parts)
        if self.error:
            text += f"; stopped: {self.error} (entries not looked up are left as they were)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"found": self.found, "missing": self.missing, "cached": self.cached, "error": self.error}


class CivitaiCache:
    """civitai_lookups: one row per file hash, found or missing, with the date it was asked."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def all_found(self) -> dict[str, dict[str, Any]]:
        async with self._db.execute("SELECT sha256, payload_json FROM civitai_lookups WHERE status = 'found'") as cur:
            return {row[0]: json.loads(row[1]) for row in await cur.fetchall()}

    async def fetched_at(self, sha256: str) -> float | None:
        async with self._db.execute("SELECT fetched_at FROM civitai_lookups WHERE sha256 = ?", (sha256,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def store(self, sha256: str, payload: dict[str, Any] | None) -> None:
        async with transaction(self._db) as db:
            await db.execute(
                "INSERT OR REPLACE INTO civitai_lookups (sha256, status, payload_json, fetched_at) VALUES (?, ?, ?, ?)",
                (sha256, "found" if payload else "missing", json.dumps(payload or {}), time.time()),
            )


async def enrich(
    cache: CivitaiCache, client: CivitaiClient, files: list[tuple[str, str]], *, refresh: bool = False
) -> EnrichReport:
    """Look up each (name, sha256) not asked about in the last 30 days (all of them with refresh).

    The first failure stops the run: without a network every further request would fail the same
    way, and the report says so once.
    """
    report = EnrichReport()
    now = time.time()
    for name, sha256 in files:
        asked = await cache.fetched_at(sha256)
        if asked is not None and not refresh and now - asked < STALE_AFTER_SECONDS:
            report.cached += 1
            continue
        try:
            payload = await client.by_hash(sha256)
        except CivitaiError as e:
            report.error = str(e)
            log.warning("civitai lookups stopped at %s: %s", name, e)
            break
        await cache.store(sha256, payload)
        (report.found if payload else report.missing).append(name)
    log.info("civitai enrichment: %s", report.summary())
    return report
