"""Civitai lookups by file hash, and live searches for checkpoints, each with a dated cache.

`GET /api/v1/model-versions/by-hash/{sha256}` answers with the model version a file belongs to:
base model, trained words, the model's name, type, tags and NSFW flag. A 404 means Civitai does not
know the file; that is cached as a miss, so private merges are not asked about again and again.

`GET /api/v1/models` (types, query, tag, baseModels, sort, nsfw, limit: the parameters of
developer.civitai.com's "List models") finds checkpoints nobody here has installed; an owner turns
it on (EASEL_CATALOG_LIVE_SEARCH). Answers are cached for a day per set of parameters, and kept
past that for when Civitai cannot be reached; a 429 is honoured for as long as its Retry-After says.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import httpx

from bot import outbound
from bot.db import transaction
from bot.untrusted import load_json
from common.errors import EaselError

log = logging.getLogger(__name__)

CIVITAI_URL = "https://civitai.com"
MAX_ANSWER_BYTES = 4 << 20
STALE_AFTER_SECONDS = 30 * 86400
SEARCH_FRESH_SECONDS = 86400
RETRY_AFTER_DEFAULT, RETRY_AFTER_MAX = 60.0, 3600.0
# Civitai's base-model names for each family Easel runs (its `baseModel` values); a family asked
# for becomes these `baseModels`, and a suggestion's base model is read back through them.
CIVITAI_BASES: dict[str, tuple[str, ...]] = {
    "sd1": ("SD 1.5", "SD 1.4"),
    "sd2": ("SD 2.0", "SD 2.1"),
    "sdxl": ("SDXL 1.0", "Pony", "Illustrious", "NoobAI"),
    "sd3": ("SD 3.5", "SD 3.5 Large", "SD 3.5 Medium"),
    "flux": ("Flux.1 D", "Flux.1 S", "Flux.1 Kontext"),
    "z-image": ("ZImageTurbo", "ZImageBase"),
    "chroma": ("Chroma",),
    "qwen-image": ("Qwen",),
}
FAMILY_OF_CIVITAI_BASE = {name.lower(): family for family, names in CIVITAI_BASES.items() for name in names}


class CivitaiError(EaselError):
    """Civitai could not be asked (no network, an error status, a malformed answer)."""


class CivitaiRateLimited(CivitaiError):
    """HTTP 429: Civitai asks us not to ask again for `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Civitai asked us to wait {retry_after:.0f} s (HTTP 429)")
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now, within 1 s .. 1 hour; a
    missing or unreadable one means a minute."""
    value = (value or "").strip()
    seconds = RETRY_AFTER_DEFAULT
    if re.fullmatch(r"\d{1,9}(?:\.\d+)?", value):
        seconds = float(value)
    elif value:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - (now or time.time())
        except (TypeError, ValueError, OverflowError):
            seconds = RETRY_AFTER_DEFAULT
    return min(max(seconds, 1.0), RETRY_AFTER_MAX)


def _strip_html(text: str) -> str:
    """Tags (`<…>`) as spaces, runs of white space as one. Found with str.find, not the regex
    `<[^>]+>`, which rescans to the end from every "<" when no ">" follows (quadratic in a page of
    "<" that anyone may write into a model's description)."""
    kept, at = [], 0
    while (opening := text.find("<", at)) >= 0:
        closing = text.find(">", opening + 1)
        if closing < 0:
            break
        if closing == opening + 1:  # "<>" is no tag
            kept.append(text[at : opening + 1])
            at = opening + 1
            continue
        kept += [text[at:opening], " "]
        at = closing + 1
    kept.append(text[at:])
    return re.sub(r"\s+", " ", "".join(kept)).strip()


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


def parse_model(item: object) -> dict[str, Any] | None:
    """One item of a `GET /api/v1/models` answer as a suggestion, or None when it is not a checkpoint
    we can name (no id, no name, not a dict)."""
    if not isinstance(item, dict) or _id(item.get("id")) is None or not isinstance(item.get("name"), str):
        return None
    versions = [v for v in item.get("modelVersions") or [] if isinstance(v, dict)]
    latest = versions[0] if versions else {}
    base_model = str(latest.get("baseModel") or "")[:40]
    stats = item.get("stats") if isinstance(item.get("stats"), dict) else {}
    return {
        "model_id": item["id"],
        "name": _strip_html(item["name"])[:120],
        "type": str(item.get("type") or "")[:40],
        "base_model": base_model,
        "family": FAMILY_OF_CIVITAI_BASE.get(base_model.lower(), ""),
        "version_name": str(latest.get("name") or "")[:80],
        "nsfw": bool(item.get("nsfw")),
        "tags": [t[:40] for t in item.get("tags") or [] if isinstance(t, str)][:12],
        "url": f"{CIVITAI_URL}/models/{item['id']}",
        **_figures({"stats": stats, "publishedAt": latest.get("publishedAt")}),
    }


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

    async def search_models(self, params: Mapping[str, str | list[str]]) -> list[dict[str, Any]]:
        """Checkpoints Civitai lists for these parameters (parse_model's shape); [] when it has none."""
        try:
            response = await self._client.get("/api/v1/models", params=dict(params))
        except httpx.HTTPError as e:
            raise CivitaiError(f"Civitai could not be reached ({type(e).__name__}: {e})") from None
        if response.status_code == 429:
            raise CivitaiRateLimited(retry_after_seconds(response.headers.get("Retry-After")))
        if response.status_code != 200:
            raise CivitaiError(f"Civitai answered HTTP {response.status_code}")
        data = read_answer(response)
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise CivitaiError("Civitai's answer is not a list of models")
        return [m for m in map(parse_model, data["items"]) if m is not None]

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


class SearchCache:
    """civitai_searches: Civitai's answer per set of search parameters, with the time it was asked."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def get(self, key: str) -> tuple[list[dict[str, Any]], float] | None:
        async with self._db.execute(
            "SELECT payload_json, fetched_at FROM civitai_searches WHERE params_key = ?", (key,)
        ) as cur:
            row = await cur.fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    async def store(self, key: str, models: list[dict[str, Any]]) -> None:
        async with transaction(self._db) as db:
            await db.execute(
                "INSERT OR REPLACE INTO civitai_searches (params_key, payload_json, fetched_at) VALUES (?, ?, ?)",
                (key, json.dumps(models), time.time()),
            )


def params_key(params: Mapping[str, str | list[str]]) -> str:
    return json.dumps(params, sort_keys=True)


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
