"""Live Civitai suggestions: checkpoints nobody here has installed, found for a question.

Off unless an owner turns it on (EASEL_CATALOG_LIVE_SEARCH=true; the CLI's `catalog search --live`).
A question becomes `GET /api/v1/models` parameters (checkpoints only, its content words, the family
asked for as Civitai's base-model names, most downloaded or newest first, NSFW hidden where the
place hides it); Civitai's answer is cached for a day per set of parameters. When Civitai cannot be
asked — offline, an error, a malformed answer, too slow, or a 429 still in force — the answer says
so in one line and shows the last cached suggestions for the same parameters, with their date.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from bot.catalog.civitai import (
    CIVITAI_BASES,
    SEARCH_FRESH_SECONDS,
    CivitaiClient,
    CivitaiError,
    CivitaiRateLimited,
    SearchCache,
    params_key,
)
from bot.catalog.query import Query
from bot.catalog.sources import spellings
from bot.catalog.taxonomy import without_phrases

log = logging.getLogger(__name__)

LIVE_TIMEOUT_SECONDS = 5.0  # a search answer does not wait longer than this for Civitai
ASKED = 8  # asked for; a few are usually known already or filtered out
SHOWN = 3


@dataclass
class LiveResult:
    suggestions: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""  # one line when Civitai was not asked or did not answer, or the cache answered


def live_params(query: Query, allow_nsfw: bool) -> dict[str, str | list[str]]:
    """The question as Civitai's search parameters."""
    params: dict[str, str | list[str]] = {
        "types": "Checkpoint",
        "limit": str(ASKED),
        "sort": "Newest" if query.era == "newest" else "Most Downloaded",
    }
    words = " ".join(without_phrases(" ".join(query.terms), {"base"}).split())  # the family goes in baseModels
    if words:
        params["query"] = words[:100]
    bases = [name for family in sorted(query.bases) for name in CIVITAI_BASES.get(family, ())]
    if bases:
        params["baseModels"] = bases
    if not allow_nsfw or query.sfw_only:
        params["nsfw"] = "false"
    return params


class LiveSearch:
    def __init__(self, cache: SearchCache, client: CivitaiClient) -> None:
        self._cache = cache
        self._client = client
        self._quiet_until = 0.0  # a 429's Retry-After: nothing is asked before this time

    async def suggest(self, query: Query, allow_nsfw: bool, known: set[str]) -> LiveResult:
        """Up to SHOWN suggestions not among `known` (squashed names of entries the catalog has)."""
        params = live_params(query, allow_nsfw)
        key = params_key(params)
        cached = await self._cache.get(key)
        if cached and time.time() - cached[1] < SEARCH_FRESH_SECONDS:
            return LiveResult(self._keep(cached[0], known, allow_nsfw))
        why = ""
        if time.time() < self._quiet_until:
            why = f"Civitai asked us to wait (rate limit); live suggestions again in {self._quiet_until - time.time():.0f} s"
        else:
            try:
                models = await asyncio.wait_for(self._client.search_models(params), LIVE_TIMEOUT_SECONDS)
            except CivitaiRateLimited as e:
                self._quiet_until = time.time() + e.retry_after
                why = f"Civitai asked us to wait (rate limit); live suggestions again in {e.retry_after:.0f} s"
            except CivitaiError as e:
                why = f"live Civitai search unavailable: {e}"
            except TimeoutError:
                why = f"Civitai did not answer within {LIVE_TIMEOUT_SECONDS:.0f} s"
            else:
                await self._cache.store(key, models)
                kept = self._keep(models, known, allow_nsfw)
                return LiveResult(kept, "" if kept else "Civitai lists nothing more for this")
        log.warning("catalog live search: %s", why)
        if cached:
            day = time.strftime("%Y-%m-%d", time.gmtime(cached[1]))
            return LiveResult(self._keep(cached[0], known, allow_nsfw), f"{why}; Civitai suggestions from {day}")
        return LiveResult([], f"{why}; answered from what the catalog knows")

    @staticmethod
    def _keep(models: list[dict[str, Any]], known: set[str], allow_nsfw: bool) -> list[dict[str, Any]]:
        kept = []
        for m in models:
            if m.get("type") not in ("", "Checkpoint") or (m.get("nsfw") and not allow_nsfw):
                continue
            if spellings(m["name"]) & known:
                continue
            kept.append(m)
        return kept[:SHOWN]


def civitai_line(model: dict[str, Any]) -> str:
    """One suggestion in one line: name, base model, figures, page."""
    parts = [model["name"]]
    if model.get("base_model"):
        parts.append(model["base_model"])
    if isinstance(model.get("downloads"), int):
        parts.append(f"{model['downloads']:,} downloads")
    if model.get("published"):
        parts.append(f"published {model['published']}")
    if model.get("nsfw"):
        parts.append("NSFW")
    return " · ".join(parts) + f" · {model['url']}"
