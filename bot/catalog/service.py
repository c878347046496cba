"""The catalog service: keeps the search index in step with the registry and answers questions.

The index (catalog_entries + catalog_fts + embeddings in the database, arrays in memory) is
rebuilt when the registry or the Civitai cache changed since the last search; embeddings are
recomputed only for entries whose text changed. Both the CLI (`catalog …`) and the bot's
`/checkpoints search` call `search`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiosqlite
import numpy as np

from bot.catalog.civitai import CivitaiCache, CivitaiClient, EnrichReport, SearchCache, enrich
from bot.catalog.embeddings import EmbeddingProcess, EmbeddingsUnavailable
from bot.catalog.entries import CatalogEntry
from bot.catalog.figures import figures_for
from bot.catalog.live import LiveSearch
from bot.catalog.loras import LoraHit, fitting_loras
from bot.catalog.query import Query, parse_query
from bot.catalog.ranking import CatalogIndex, Scored
from bot.catalog.running import latest_year, running_line, settings_line
from bot.catalog.sources import installed_entry, reference_entries
from bot.catalog.taxonomy import BASES, REALISM, SPECIALITIES, STYLES
from bot.checkpoints.registry import CheckpointRegistry, slugify
from bot.db import transaction
from bot.generation.checkpoint_ref import NATIVE_SIZE
from bot.networks.registry import LoraRegistry

log = logging.getLogger(__name__)

MAX_QUESTION = 300
SOURCE_NAMES = {
    "owner": "set by an owner",
    "metadata": "from the file",
    "sidecar": "from its Civitai/A1111 files",
    "civitai": "from Civitai",
    "reference": "known model",
    "inferred": "guessed from its name and description",
}

HELP = (
    "Ask in words what you want to make, for example: “which checkpoint for anime?”, "
    "“best realistic portrait model for sdxl”, “something painterly for fantasy landscapes”, "
    "“2.5D characters”, “photo of products, sd1.5”, “no nsfw”.\n"
    f"Styles: {', '.join(STYLES)}. Realism: {', '.join(REALISM)}. "
    f"Good at: {', '.join(SPECIALITIES)}. Bases: {', '.join(BASES.values())}."
)


@dataclass
class Hit:
    entry: CatalogEntry
    score: float
    why: str  # one line: what fits, where it is, its trigger words
    try_: str  # one line: how to use it

    def to_dict(self) -> dict[str, Any]:
        e = self.entry
        return {
            "name": e.name,
            "display_name": e.display_name,
            "installed": e.installed,
            "base": e.base_label,
            "styles": e.styles,
            "realism": e.realism,
            "specialities": e.specialities,
            "training": e.training,
            "nsfw": e.nsfw,
            "trigger_words": e.trigger_words,
            "autov2": e.autov2,
            "source_url": e.source_url,
            "runs": running_line(e),
            "released": e.released,
            "updated": e.updated,
            "superseded_by": e.superseded_by,
            "settings": e.settings,
            "popularity": e.popularity,
            "score": round(self.score, 4),
            "why": self.why,
            "try": self.try_,
        }


@dataclass
class Answer:
    question: str
    hits: list[Hit] = field(default_factory=list)
    help: str | None = None  # set instead of hits when the question gives nothing to go on
    notes: list[str] = field(default_factory=list)
    understood: str = ""  # how the question was read, e.g. "style anime · base SDXL"
    loras: list[LoraHit] = field(default_factory=list)  # installed LoRAs that fit, for the answer's family
    lora_family: str = ""
    civitai: list[dict[str, Any]] = field(default_factory=list)  # live suggestions (bot/catalog/live.py)

    @property
    def installed(self) -> list[Hit]:
        return [h for h in self.hits if h.entry.installed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "understood": self.understood,
            "results": [h.to_dict() for h in self.hits],
            "help": self.help,
            "notes": self.notes,
            "loras": [h.to_dict() for h in self.loras],
            "civitai": self.civitai,
        }


def describe_query(query: Query) -> str:
    f = query.facets
    parts = [
        *(f"style {s}" for s in sorted(f.styles)),
        *(f"realism {r}" for r in sorted(f.realism)),
        *(f"for {s}" for s in sorted(f.specialities)),
        *(f"training {t}" for t in sorted(f.training)),
        *(f"base {BASES.get(b, b)}" for b in sorted(f.bases)),
    ]
    if query.sfw_only:
        parts.append("SFW only")
    if query.era:
        parts.append(query.era)
    if query.max_vram_gb:
        parts.append(f"at most {query.max_vram_gb:g} GB of VRAM")
    if query.fast:
        parts.append("few steps")
    if query.installed_only:
        parts.append("installed only")
    if query.rest:
        parts.append("“" + " ".join(query.rest) + "”")
    return " · ".join(parts)


def explain(scored: Scored, query: Query) -> tuple[str, str]:
    """The answer's two lines for one checkpoint: why it fits, and what to try."""
    e = scored.entry
    f = query.facets
    reasons: list[str] = []
    matched = [s for s in e.styles if s in f.styles] or (
        ["general purpose"] if f.styles and "general purpose" in e.styles else []
    )
    if matched:
        reasons.append(f"{', '.join(matched)} style ({SOURCE_NAMES.get(e.sources.get('styles', ''), 'catalog')})")
    elif e.styles and not f.styles:
        reasons.append(", ".join(e.styles))
    if e.realism and (f.realism or not f.styles):
        reasons.append("/".join(e.realism))
    good_at = [s for s in e.specialities if s in f.specialities]
    if good_at:
        reasons.append(f"good at {', '.join(good_at)}")
    if f.training and e.training in f.training:
        reasons.append(e.training)
    if query.fast and e.fast:
        reasons.append("made for few steps")
    if e.installed:
        reasons.append("installed here" if e.runnable else "installed here but cannot run now")
    else:
        reasons.append("not installed here")
    reasons.append(running_line(e))
    downloads = e.popularity.get("downloads")
    if isinstance(downloads, int):
        as_of = e.popularity.get("as_of")
        reasons.append(f"{downloads:,} downloads on Civitai" + (f" (as of {as_of})" if as_of else ""))
    if e.superseded_by:
        reasons.append(f"superseded by {e.superseded_by}")
    elif year := latest_year(e):
        reasons.append(f"{'updated' if e.updated else 'from'} {int(year)}")
    if e.known_as and e.known_as != e.display_name:
        reasons.append(f"recognised as {e.known_as}")
    if e.trigger_words:
        reasons.append("trigger words: " + ", ".join(e.trigger_words[:3]))
    if e.nsfw:
        reasons.append("NSFW")

    side = e.native_size or NATIVE_SIZE.get(e.base, 512)
    settings = settings_line(e)
    if e.installed and e.runnable:
        start = f"/imagine checkpoint:{e.name}"
        if e.trigger_words:
            start += f' prompt:"{e.trigger_words[0]}, …"'
        try_ = f"{start} · native {side}×{side}" + (f" · its card: {settings}" if settings else "")
    elif e.installed:
        try_ = "ask an owner to fix or re-register it"
    else:
        try_ = (
            "ask an owner to install it" + (f" ({e.source_url})" if e.source_url else "") + f"; runs at {side}×{side}"
        ) + (f"; its card: {settings}" if settings else "")
    return " · ".join(reasons), try_


async def _none() -> None:
    return None


class CatalogService:
    def __init__(
        self,
        db: aiosqlite.Connection,
        registry: CheckpointRegistry,
        embedder: EmbeddingProcess | None,
        *,
        civitai_api_key: str | None = None,
        loras: LoraRegistry | None = None,
        live_search: bool = False,
        civitai_client: CivitaiClient | None = None,
    ) -> None:
        self._db = db
        self.registry = registry
        self.loras = loras
        self.embedder = embedder
        self.civitai_cache = CivitaiCache(db)
        self.civitai_api_key = civitai_api_key
        self.live_search = live_search  # an owner's choice: ask Civitai for checkpoints not installed
        self._civitai_client = civitai_client  # made on first use; given by tests
        self._own_client = civitai_client is None
        self._live: LiveSearch | None = None
        self._index = CatalogIndex([], np.zeros((0, 0), dtype=np.float32))
        self._fingerprint: tuple[Any, ...] | None = None
        self._refresh_lock = asyncio.Lock()
        self._told_no_embeddings = False
        self._query_vectors: dict[str, np.ndarray] = {}  # small LRU: the same questions come back

    # --- keeping the index current ----------------------------------------------------------------

    async def _current_fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever a checkpoint is added, edited, removed or rescanned, or Civitai answered."""
        async with self._db.execute(
            "SELECT (SELECT count(*) FROM checkpoints), (SELECT max(updated_at) FROM checkpoints), "
            "(SELECT total(id) FROM checkpoints), (SELECT count(*) FROM civitai_lookups), "
            "(SELECT max(fetched_at) FROM civitai_lookups)"
        ) as cur:
            row = tuple(await cur.fetchone())
        return (*row, self.embedder.ready if self.embedder else False)

    async def entries(self) -> list[CatalogEntry]:
        """Every entry: installed checkpoints first, then reference ones not installed here."""
        civitai = await self.civitai_cache.all_found()
        installed = [installed_entry(c, civitai.get(c.sha256)) for c in await self.registry.list()]
        known_here = {e.known_as for e in installed if e.known_as}
        entries = installed + [r for r in reference_entries() if r.display_name not in known_here]
        # Figures from a lookup of the file itself come first; else the bundled snapshot's, dated.
        return [
            e if e.popularity else replace(e, popularity=figures_for(slugify(e.known_as) if e.installed else e.name))
            for e in entries
        ]

    async def refresh(self, *, force: bool = False, wait_for_model: bool = True) -> CatalogIndex:
        async with self._refresh_lock:
            fingerprint = await self._current_fingerprint()
            if not force and fingerprint == self._fingerprint:
                return self._index
            started = time.perf_counter()
            entries = await self.entries()
            vectors = await self._store(entries, wait_for_model)
            self._index = await asyncio.to_thread(CatalogIndex, entries, vectors)
            self._fingerprint = await self._current_fingerprint()
            log.info("catalog index rebuilt: %d entries in %.2f s", len(entries), time.perf_counter() - started)
            return self._index

    async def _store(self, entries: list[CatalogEntry], wait_for_model: bool) -> np.ndarray:
        """Write entries and full text; embed what changed; return the n x d matrix of vectors."""
        async with self._db.execute("SELECT key, content_hash, embedding, embedding_model FROM catalog_entries") as cur:
            stored = {row[0]: row[1:] for row in await cur.fetchall()}
        model = self.embedder.model if self.embedder and self.embedder.ready else ""
        vectors: dict[str, np.ndarray] = {}
        to_embed: list[CatalogEntry] = []
        for e in entries:
            old = stored.get(e.key)
            if old and old[1] is not None and old[0] == e.content_hash() and (not model or old[2] == model):
                vectors[e.key] = np.frombuffer(old[1], dtype=np.float32)
            else:
                to_embed.append(e)
        if to_embed and self.embedder is not None:
            try:
                fresh = await self.embedder.embed([e.document() for e in to_embed], wait=wait_for_model)
                model = self.embedder.model
                vectors.update({e.key: fresh[i] for i, e in enumerate(to_embed)})
            except EmbeddingsUnavailable as e:
                self._note_no_embeddings(str(e))
        async with transaction(self._db) as db:
            await db.execute("DELETE FROM catalog_entries")
            await db.execute("DELETE FROM catalog_fts")
            await db.executemany(
                "INSERT INTO catalog_entries (key, entry_json, content_hash, embedding, embedding_model) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        e.key,
                        e.to_json(),
                        e.content_hash(),
                        vectors[e.key].tobytes() if e.key in vectors else None,
                        model if e.key in vectors else None,
                    )
                    for e in entries
                ],
            )
            await db.executemany(
                "INSERT INTO catalog_fts (key, name, description, tags) VALUES (?, ?, ?, ?)",
                [(e.key, f"{e.display_name} {e.name} {e.known_as}", e.description, " ".join(e.tags)) for e in entries],
            )
        dim = next((len(v) for v in vectors.values()), 0)
        matrix = np.zeros((len(entries), dim), dtype=np.float32)
        for i, e in enumerate(entries):
            if e.key in vectors and dim:
                matrix[i] = vectors[e.key]
        return matrix

    def _note_no_embeddings(self, reason: str) -> None:
        if not self._told_no_embeddings:
            log.warning("catalog search without semantic similarity: %s", reason)
            self._told_no_embeddings = True

    # --- searching --------------------------------------------------------------------------------

    async def _bm25(self, query: Query, index: CatalogIndex) -> dict[str, float]:
        # Facet words are scored as facets; full text then only has to place the other words (names,
        # subjects). That also keeps common words ("anime") from matching half of a large catalog.
        words = query.rest if not query.facets.empty else query.terms
        terms = [t for t in words if re.fullmatch(r"[\w.+'&-]+", t) and not index.common(t)]
        if not terms:
            return {}
        expression = " OR ".join('"' + t.replace('"', "") + '"' for t in terms)
        async with self._db.execute(
            "SELECT key, bm25(catalog_fts, 4.0, 1.0, 2.0) FROM catalog_fts WHERE catalog_fts MATCH ? "
            "ORDER BY rank LIMIT 500",
            (expression,),
        ) as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def _query_vector(self, text: str, wait: bool) -> np.ndarray | None:
        if self.embedder is None:
            return None
        cached = self._query_vectors.pop(text, None)
        if cached is None:
            try:
                cached = (await self.embedder.embed([text], wait=wait))[0]
            except EmbeddingsUnavailable as e:
                self._note_no_embeddings(str(e))
                return None
        self._query_vectors[text] = cached
        while len(self._query_vectors) > 512:
            self._query_vectors.pop(next(iter(self._query_vectors)))
        return cached

    async def search(
        self,
        question: str,
        *,
        allow_nsfw: bool = True,
        limit: int = 5,
        wait_for_model: bool = True,
        hidden: set[str] = frozenset(),  # type: ignore[assignment]  # sha256 of checkpoints hidden here
        signal: str = "",  # one signal alone (facets, text, meaning, prior): bench/catalog_eval.py's comparison
    ) -> Answer:
        """Rank the catalog for a question. Refuses nothing: a question with nothing to go on gets help."""
        question = " ".join(question.split())[:MAX_QUESTION]
        query = parse_query(question)
        answer = Answer(question=question, understood=describe_query(query))
        if not query.meaningful and not query.sfw_only and not query.bases:
            answer.help = HELP
            return answer
        semantic = bool(query.rest or not query.facets.empty)
        # The question's embedding (its own process) runs while SQLite's thread checks the index
        # and does the full-text part.
        embedding = asyncio.ensure_future(self._query_vector(question, wait_for_model) if semantic else _none())
        try:
            index = await self.refresh(wait_for_model=wait_for_model)
            bm25 = await self._bm25(query, index)
            vector = await embedding
        finally:
            embedding.cancel()  # only matters when something above failed
        if vector is None and self.embedder is not None and not self.embedder.ready:
            answer.notes.append("matched on facets and words only (the embedding model is not loaded)")
        vector = vector if vector is not None and index.vectors.shape[1] == len(vector) else None
        scored, nonsense = await asyncio.to_thread(
            index.rank,
            query,
            bm25=bm25,
            query_vector=vector,
            allow_nsfw=allow_nsfw,
            limit=limit,
            exclude={f"ckpt:{sha}" for sha in hidden},
            signal=signal,
        )
        if nonsense:
            answer.help = f"Nothing in the catalog matches “{question}”.\n" + HELP
            return answer
        answer.hits = [Hit(s.entry, s.score, *explain(s, query)) for s in scored]
        if not answer.hits:
            answer.help = "No checkpoint fits those constraints" + (
                " here (NSFW checkpoints are not shown in this channel)." if not allow_nsfw else "."
            )
            return answer
        # LoRAs for the family asked about, else for the best installed answer's.
        family = next(iter(query.bases), "") if len(query.bases) == 1 else ""
        family = family or next((h.entry.base for h in answer.installed), "")
        if self.loras is not None and family:
            answer.lora_family = family
            answer.loras = fitting_loras(await self.loras.list(status="present"), query, family, allow_nsfw=allow_nsfw)
        if self.live_search and not signal:
            live = await self._live_search().suggest(query, allow_nsfw, set(index.names))
            answer.civitai = live.suggestions
            if live.note:
                answer.notes.append(live.note)
        return answer

    def _client(self) -> CivitaiClient:
        if self._civitai_client is None:
            self._civitai_client = CivitaiClient(self.civitai_api_key)
        return self._civitai_client

    def _live_search(self) -> LiveSearch:
        if self._live is None:
            self._live = LiveSearch(SearchCache(self._db), self._client())
        return self._live

    def semantic_state(self) -> str:
        """For /status: whether questions are matched by meaning right now."""
        if self.embedder is None:
            return "off (EASEL_SEMANTIC_SEARCH=false)"
        if self.embedder.failure:
            return f"unavailable: {self.embedder.failure}"
        if self.embedder.ready:
            return (
                f"ready ({self.embedder.model} on {self.embedder.backend}, "
                f"loaded in {self.embedder.start_seconds or 0:.1f} s)"
            )
        return "loading…"

    async def close(self) -> None:
        """Close what the catalog owns (its embedding process, its Civitai client); the database
        belongs to the caller."""
        if self.embedder is not None:
            await self.embedder.close()
        if self._own_client and self._civitai_client is not None:
            await self._civitai_client.close()

    async def get(self, name: str) -> CatalogEntry | None:
        index = await self.refresh()
        return next((e for e in index.entries if e.name == name), None)

    # --- Civitai ----------------------------------------------------------------------------------

    async def enrich(self, *, refresh: bool = False, client: CivitaiClient | None = None) -> EnrichReport:
        """Look up every installed checkpoint and LoRA on Civitai by hash (cached; misses too); what is
        found fills LoRAs' trigger words, tags and descriptions."""
        files = [(c.name, c.sha256) for c in await self.registry.list()]
        if self.loras is not None:
            files += [(f"LoRA {e.name}", e.sha256) for e in await self.loras.list()]
        report = await enrich(self.civitai_cache, client or self._client(), files, refresh=refresh)
        if self.loras is not None:
            await self.loras.apply_civitai(await self.civitai_cache.all_found())
        return report
