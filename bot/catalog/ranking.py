"""Hybrid ranking over the whole catalog at once: facets, full text (BM25) and meaning (embeddings).

Everything per entry lives in numpy arrays built once per catalog change, so a search over 10,000
entries is a handful of vector operations rather than a Python loop.

score = facet fit (when the question names facets) + full-text + semantic similarity
        + a bonus for checkpoints that run here now (less for installed ones that cannot), so they
          rank above reference-only ones of similar fit
        + a currency prior (bot/catalog/running.py: how recent the line is, halved when its makers
          superseded it, and Civitai's download figures when enriched), small beside fit so a
          well-fitting current model beats a well-fitting abandoned one without beating a better fit;
          "newest" in the question leans on it harder, "classic" turns it round.
Base model, NSFW and a stated VRAM size ("on 6 GB") are filters, not hints: an entry that fails
them is never returned. "fast" / "few steps" is a facet: models made for few steps fit it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from bot.catalog.entries import CatalogEntry
from bot.catalog.query import Query
from bot.catalog.running import EARLIEST, latest_year, least_vram_gb, popularity, recency
from bot.catalog.sources import match_key, squash
from bot.catalog.taxonomy import REALISM, SPECIALITIES, STYLES, TRAINING, realism_closeness, words

# Weights when the question names facets / when it is free text only.
W_FACET, W_TEXT, W_MEANING = 0.60, 0.15, 0.25
W_TEXT_ONLY, W_MEANING_ONLY = 0.45, 0.55
W_NAME = 0.25  # the question names the model ("epic realism xl", "realvis"): above any facet tie
NAME_MIN = 5  # shorter squashed names ("sd", "v5") are too common to mean a model
MISSPELT = 0.7  # how surely a name one letter off (too many, missing, wrong) names the model
# One letter off is only looked for in names of 7 letters or more: shorter ones are a letter away
# from ordinary words ("photo" is "Photon" less a letter).
FUZZY_MIN = 7
RUNNABLE_BONUS, INSTALLED_BONUS = 0.10, 0.03  # runs here now / installed but cannot run now
W_PRIOR, W_PRIOR_ASKED = 0.10, 0.35  # the currency prior: by default / when the question asks for new or classic
COMMON_SHARE, COMMON_MIN_ENTRIES = 0.05, 1000
GENERAL_PURPOSE_CREDIT = 0.3  # a general-purpose model half-answers any style question
# Cosine similarities of all-MiniLM-L6-v2 between a question and an unrelated text sit near 0.1; a
# clear match is 0.5 or more. Rescaled to 0..1 over that span.
COS_FLOOR, COS_SPAN = 0.10, 0.45
# A free-text question with no full-text hit and nothing closer than this is treated as nonsense.
NONSENSE_COS = 0.30



def without_xl(name: str) -> str:
    """The name without a trailing "XL" and the separators before it (as `[\\s_-]*xl$` would strip,
    without its quadratic backtracking on a long run of spaces)."""
    if not name.lower().endswith("xl"):
        return name
    stem = name[:-2]
    while stem and (stem[-1].isspace() or stem[-1] in "_-"):
        stem = stem[:-1]
    return stem

def name_keys(entry: CatalogEntry) -> dict[str, float]:
    """How a question may name an entry, and how surely: its names and aliases squashed with their
    version (1.0: "animagine xl 3.1" is Animagine XL 3.1, not 4.0), or without it and without a
    trailing "xl" as match_key squashes them (0.8: "animagine" is either; "pony diffusion" is Pony
    Diffusion V6 XL)."""
    keys: dict[str, float] = {}
    for name in (entry.display_name, entry.name, entry.known_as, *entry.tags):
        if not name:
            continue
        loose = match_key(name)
        unversioned = match_key(without_xl(name))  # "Pony Diffusion V6 XL"
        for key, sure in (
            (loose, 0.8),
            (loose.removesuffix("xl"), 0.8),
            (unversioned, 0.8),
            (squash(name), 1.0),
        ):
            if len(key) >= NAME_MIN:
                keys[key] = max(sure, keys.get(key, 0.0))
    return keys


def _one_letter_off_index(names: dict[str, list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every name key and every key with one letter left out (keys of FUZZY_MIN letters or more), as sorted
    64-bit hashes with the entry and sureness beside each: compact enough for 10,000 entries (a dict of
    the strings would hold half a million of them)."""
    hashes: list[int] = []
    entries: list[int] = []
    sureness: list[float] = []
    for key, owners in names.items():
        if len(key) < FUZZY_MIN - 1:
            continue
        variants = {key}
        if len(key) >= FUZZY_MIN:
            variants.update(key[:cut] + key[cut + 1 :] for cut in range(len(key)))
        for variant in variants:
            h = hash(variant)
            for i, sure in owners:
                hashes.append(h)
                entries.append(i)
                sureness.append(sure)
    order = np.argsort(np.array(hashes, dtype=np.int64), kind="stable")
    return (
        np.array(hashes, dtype=np.int64)[order],
        np.array(entries, dtype=np.int64)[order],
        np.array(sureness, dtype=np.float32)[order],
    )


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
        self.runnable = np.array([e.installed and e.runnable for e in self.entries], dtype=bool).reshape(n)
        self.fast = np.array([e.fast for e in self.entries], dtype=bool).reshape(n)
        self.least_vram = np.array([least_vram_gb(e) for e in self.entries], dtype=np.float32).reshape(n)
        years = [latest_year(e) for e in self.entries]
        newest = max((y for y in years if y is not None), default=EARLIEST + 1)
        self.recency = np.array([recency(e, newest) for e in self.entries], dtype=np.float32).reshape(n)
        self.age = 1.0 - np.array(
            [recency(e, newest, superseded=False) for e in self.entries], dtype=np.float32
        ).reshape(n)
        known = [popularity(e) for e in self.entries]
        self.popularity = np.array([p if p is not None else np.nan for p in known], dtype=np.float32).reshape(n)
        self.has_vector = np.any(self.vectors != 0, axis=1) if n else np.zeros(0, dtype=bool)
        self.doc_freq = Counter(w for e in self.entries for w in set(words(f"{e.document()} {e.name}")))
        self.names: dict[str, list[tuple[int, float]]] = {}  # squashed name (and alias) -> (entry, sureness)
        for i, e in enumerate(self.entries):
            for key, sure in name_keys(e).items():
                self.names.setdefault(key, []).append((i, sure))
        self.longest_name = max(map(len, self.names), default=0)
        self._near_names = _one_letter_off_index(self.names)

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
        if query.max_vram_gb:
            mask &= self.least_vram <= query.max_vram_gb
        if query.installed_only:
            mask &= self.installed
        return mask

    def prior(self, query: Query) -> tuple[np.ndarray, float]:
        """(the currency prior per entry, 0..1, and its weight) for this question."""
        if query.era == "classic":  # the oldest lines first, superseded or not
            return self.age, W_PRIOR_ASKED
        if query.era == "newest":
            return self.recency, W_PRIOR_ASKED
        known = ~np.isnan(self.popularity)
        blended = np.where(known, 0.5 * self.recency + 0.5 * np.nan_to_num(self.popularity), self.recency)
        return blended.astype(np.float32), W_PRIOR

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
        if query.fast:
            groups.append(self.fast.astype(np.float32))
        if not groups:
            return None
        return np.mean(groups, axis=0).astype(np.float32)

    def name_scores(self, text: str) -> np.ndarray:
        """How surely the question names each entry (name_keys), its words squashed as names are
        ("Epic Realism XL" -> epicrealismxl): every substring of it is looked up once."""
        scores = np.zeros(len(self.entries), dtype=np.float32)
        squashed = squash(text)
        for start in range(len(squashed)):
            for end in range(start + NAME_MIN, min(len(squashed), start + self.longest_name) + 1):
                for i, sure in self.names.get(squashed[start:end], ()):
                    scores[i] = max(scores[i], sure)
        if not scores.any():
            self._misspelt_names(text, scores)
        return scores

    def _misspelt_names(self, text: str, scores: np.ndarray) -> None:
        """A name typed one letter off: one too many ("ponny diffusion"), one missing ("illustrius"), one
        wrong ("juggernaught xl"). Symmetric deletion (as SymSpell does): each run of the question's
        words, squashed, and the run with one letter left out, against each name and each name with one
        letter left out. Runs start at a word, and every variant is hashed and looked up in one sorted
        array, so a question costs one numpy search, not a scan of the names."""
        words = re.findall(r"[a-z0-9]+", text.lower())
        variants: set[str] = set()
        for first in range(len(words)):
            run = ""
            for word in words[first:]:
                run += word
                if len(run) > self.longest_name + 1:
                    break
                if len(run) >= FUZZY_MIN - 1:
                    variants.add(run)
                if len(run) >= FUZZY_MIN:
                    variants.update(run[:cut] + run[cut + 1 :] for cut in range(len(run)))
        hashes, entry, sure = self._near_names
        if not variants or not len(hashes):
            return
        wanted = np.fromiter((hash(v) for v in variants), dtype=np.int64, count=len(variants))
        lo = np.searchsorted(hashes, wanted, side="left")
        hi = np.searchsorted(hashes, wanted, side="right")
        for a, b in zip(lo[hi > lo], hi[hi > lo], strict=True):
            np.maximum.at(scores, entry[a:b], MISSPELT * sure[a:b])

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
        signal: str = "",
    ) -> tuple[list[Scored], bool]:
        """The best `limit` entries, and whether the question looked like nonsense. `signal` (facets,
        text, meaning or prior) ranks by that signal alone, for the evaluation's comparison."""
        n = len(self.entries)
        if not n:
            return [], False
        mask = self.allowed(query, allow_nsfw)
        for key in exclude:
            if key in self.keys:
                mask[self.keys[key]] = False
        facet = self.facet_scores(query)
        named = self.name_scores(query.text)
        text = self.text_scores(bm25)
        meaning, best_cos = self.meaning_scores(query_vector)
        if facet is not None:
            score = W_FACET * facet + W_TEXT * text + W_MEANING * meaning
            nonsense = False
        elif query.rest:
            score = W_TEXT_ONLY * text + W_MEANING_ONLY * meaning
            nonsense = not bm25 and (query_vector is None or best_cos < NONSENSE_COS) and not named.any()
        else:  # only constraints ("sdxl models", "no nsfw"): the allowed ones, general-purpose first
            facet = np.zeros(n, dtype=np.float32)
            score = np.where(self.general, 0.5, 0.0).astype(np.float32) + 0.01 * meaning
            nonsense = False
        score = score + W_NAME * named
        score = score + np.where(self.runnable, RUNNABLE_BONUS, np.where(self.installed, INSTALLED_BONUS, 0.0))
        prior, weight = self.prior(query)
        score = score + weight * prior
        if signal:
            alone = {
                "facets": facet if facet is not None else np.zeros(n),
                "text": text,
                "meaning": meaning,
                "name": named,
            }
            score = alone.get(signal, prior).astype(np.float32)
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
