"""Hybrid ranking over the whole catalog at once: facets, full text (BM25) and meaning (embeddings).

Everything per entry lives in numpy arrays built once per catalog change, so a search over 10,000
entries is a handful of vector operations rather than a Python loop.

score = facet fit (when the question names facets) + full-text + semantic similarity
        + a bonus for installed checkpoints, so they rank above reference-only ones of similar fit.
Base model and NSFW are filters, not hints: an entry that fails them is never returned.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from bot.catalog.entries import CatalogEntry
from bot.catalog.query import Query
from bot.catalog.taxonomy import REALISM, SPECIALITIES, STYLES, TRAINING, realism_closeness, words

# Weights when the question names facets / when it is free text only.
W_FACET, W_TEXT, W_MEANING = 0.60, 0.15, 0.25
W_TEXT_ONLY, W_MEANING_ONLY = 0.45, 0.55
INSTALLED_BONUS = 0.10
COMMON_SHARE, COMMON_MIN_ENTRIES = 0.05, 1000
GENERAL_PURPOSE_CREDIT = 0.3  # a general-purpose model half-answers any style question
# Cosine similarities of all-MiniLM-L6-v2 between a question and an unrelated text sit near 0.1; a
# clear match is 0.5 or more. Rescaled to 0..1 over that span.
COS_FLOOR, COS_SPAN = 0.10, 0.45
# A free-text question with no full-text hit and nothing closer than this is treated as nonsense.
NONSENSE_COS = 0.30


def _bits(values: list[str], vocabulary: tuple[str, ...]) -> int:
    return sum(1 << vocabulary.index(v) for v in values if v in vocabulary)


def _popcount(a: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a.astype(np.uint64)).astype(np.float32)


@dataclass
class Scored:
    entry: CatalogEntry
    score: float
    facet: float
    text: float
    meaning: float


@dataclass
class CatalogIndex:
    entries: list[CatalogEntry]
    vectors: np.ndarray  # n x d, zero rows where no embedding exists
    keys: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.entries)
        self.keys = {e.key: i for i, e in enumerate(self.entries)}
        self.styles = np.array([_bits(e.styles, STYLES) for e in self.entries], dtype=np.int64).reshape(n)
        self.specialities = np.array([_bits(e.specialities, SPECIALITIES) for e in self.entries], dtype=np.int64)
        self.training = np.array([_bits([e.training], TRAINING) for e in self.entries], dtype=np.int64).reshape(n)
        self.general = (self.styles & (1 << STYLES.index("general purpose"))) != 0
        # closeness[i, g]: how well entry i answers a question for realism grade g
        self.realism = np.zeros((n, len(REALISM)), dtype=np.float32)
        for i, e in enumerate(self.entries):
            for g, wanted in enumerate(REALISM):
                self.realism[i, g] = max((realism_closeness(wanted, have) for have in e.realism), default=0.0)
        self.base_codes = {b: i for i, b in enumerate(sorted({e.base for e in self.entries}))}
        self.base = np.array([self.base_codes[e.base] for e in self.entries], dtype=np.int16).reshape(n)
        self.nsfw = np.array([e.nsfw for e in self.entries], dtype=bool).reshape(n)
        self.installed = np.array([e.installed for e in self.entries], dtype=bool).reshape(n)
        self.has_vector = np.any(self.vectors != 0, axis=1) if n else np.zeros(0, dtype=bool)
        self.doc_freq = Counter(w for e in self.entries for w in set(words(f"{e.document()} {e.name}")))

    def common(self, word: str) -> bool:
        """A word in more than 5 % of a large catalog says little about which entry fits, and makes
        full-text search score thousands of rows; facets and meaning still see it."""
        n = len(self.entries)
        return n >= COMMON_MIN_ENTRIES and self.doc_freq.get(word, 0) > COMMON_SHARE * n

    def __len__(self) -> int:
        return len(self.entries)

    def allowed(self, query: Query, allow_nsfw: bool) -> np.ndarray:
        mask = np.ones(len(self.entries), dtype=bool)
        if query.bases:
            mask &= np.isin(self.base, [self.base_codes[b] for b in query.bases if b in self.base_codes])
        if query.sfw_only or not allow_nsfw:
            mask &= ~self.nsfw
        return mask

    def facet_scores(self, query: Query) -> np.ndarray | None:
        """Mean over the facet groups the question names of how well each entry fits; None if it names none."""
        f = query.facets
        groups: list[np.ndarray] = []
        if f.styles:
            wanted = _bits(sorted(f.styles), STYLES)
            hit = _popcount(self.styles & wanted) / len(f.styles)
            groups.append(np.maximum(hit, np.where(self.general, GENERAL_PURPOSE_CREDIT, 0.0)))
        if f.specialities:
            groups.append(
                _popcount(self.specialities & _bits(sorted(f.specialities), SPECIALITIES)) / len(f.specialities)
            )
        if f.realism:
            columns = [REALISM.index(r) for r in f.realism]
            groups.append(self.realism[:, columns].max(axis=1))
        if f.training:
            groups.append(((self.training & _bits(sorted(f.training), TRAINING)) != 0).astype(np.float32))
        if not groups:
            return None
        return np.mean(groups, axis=0).astype(np.float32)

    def meaning_scores(self, query_vector: np.ndarray | None) -> tuple[np.ndarray, float]:
        """Rescaled cosine similarity per entry, and the best raw cosine."""
        n = len(self.entries)
        if query_vector is None or not n:
            return np.zeros(n, dtype=np.float32), 0.0
        cos = self.vectors @ query_vector
        cos[~self.has_vector] = 0.0
        best = float(cos.max()) if n else 0.0
        return np.clip((cos - COS_FLOOR) / COS_SPAN, 0.0, 1.0).astype(np.float32), best

    def text_scores(self, bm25: dict[str, float]) -> np.ndarray:
        """FTS5's bm25 (lower is better, negative) turned into 0..1 against the best hit."""
        scores = np.zeros(len(self.entries), dtype=np.float32)
        for key, value in bm25.items():
            i = self.keys.get(key)
            if i is not None:
                scores[i] = -value
        top = scores.max() if len(scores) else 0.0
        return scores / top if top > 0 else scores

    def rank(
        self,
        query: Query,
        *,
        bm25: dict[str, float],
        query_vector: np.ndarray | None,
        allow_nsfw: bool,
        limit: int,
        exclude: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> tuple[list[Scored], bool]:
        """The best `limit` entries, and whether the question looked like nonsense."""
        n = len(self.entries)
        if not n:
            return [], False
        mask = self.allowed(query, allow_nsfw)
        for key in exclude:
            if key in self.keys:
                mask[self.keys[key]] = False
        facet = self.facet_scores(query)
        text = self.text_scores(bm25)
        meaning, best_cos = self.meaning_scores(query_vector)
        if facet is not None:
            score = W_FACET * facet + W_TEXT * text + W_MEANING * meaning
            nonsense = False
        elif query.rest:
            score = W_TEXT_ONLY * text + W_MEANING_ONLY * meaning
            nonsense = not bm25 and (query_vector is None or best_cos < NONSENSE_COS)
        else:  # only constraints ("sdxl models", "no nsfw"): the allowed ones, general-purpose first
            facet = np.zeros(n, dtype=np.float32)
            score = np.where(self.general, 0.5, 0.0).astype(np.float32) + 0.01 * meaning
            nonsense = False
        score = score + np.where(self.installed, INSTALLED_BONUS, 0.0)
        score = np.where(mask, score, -np.inf)
        count = min(limit, int(mask.sum()))
        if count <= 0:
            return [], nonsense
        top = np.argpartition(-score, count - 1)[:count]
        top = top[np.lexsort((top, -score[top]))]  # by score, then catalog order for ties
        facet_values = facet if facet is not None else np.zeros(n, dtype=np.float32)
        return [
            Scored(self.entries[i], float(score[i]), float(facet_values[i]), float(text[i]), float(meaning[i]))
            for i in top
        ], nonsense
