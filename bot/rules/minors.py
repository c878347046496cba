"""The one prompt rule no place can relax: prompts that put minors and sexual content together are
refused before anything is queued, in every channel, DM and age-restricted channel, and on the CLI.

Refused only when both are there: a word or an age that means a minor, and a word that means
sexual content. Before the words are looked for, the disguises people try are undone, each in a view
of the text of its own so that undoing one never invents another word:
- Unicode: compatibility forms (full-width letters and digits, ligatures), invisible characters
  (zero-width spaces, soft hyphens), any script's digits, look-alike letters from Cyrillic, Greek and
  Armenian ("lоli" with a Cyrillic о), accents ("nüde");
- leetspeak inside words ("l0li", "s3x", "ch!ld"), separators inside words ("l.o.l.i", "sho-ta",
  "l*o*l*i"), letters set apart ("s h o t a", "lo li"), letters repeated ("loooli", "teeeen").
  Repeats are undone by comparing runs of letters, never by collapsing the word lists themselves:
  "teen" is not "ten", "butt" is not "but".
Ages up to 17 count as minors in the forms people write them ("14yo", "14 y.o.", "fourteen-year-old",
"aged 12", "12 Jahre alt", "12歳"), and so do school grades; quantities ("ten balloons"), durations
("10 years of marriage") and things with an age ("a 12 year old whisky") do not.
The word lists (bot/rules/minors_terms.py) cover English, Spanish, Portuguese, French, German,
Russian, Japanese, Chinese and Korean. Owners may add words (EASEL_MINOR_TERMS, EASEL_SEXUAL_TERMS)
but not remove these. Measured on bench/data/minors_eval.jsonl by bench/minors_eval.py.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from bot.rules import minors_terms as terms
from bot.rules.limits import GenerationError

REFUSAL = "this prompt cannot be generated here or anywhere; please rephrase it"

# Letters that look like Latin ones (after case folding), from Unicode's confusables for the scripts
# people reach for.
_LOOK_ALIKES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "г": "r", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "п": "n",
        "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ш": "w", "щ": "w", "ь": "b", "ъ": "b", "ѕ": "s",
        "і": "i", "ї": "i", "ј": "j", "ӏ": "l", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ү": "y", "ҳ": "x",
        # Greek
        "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "u", "ν": "v", "ο": "o",
        "π": "n", "ρ": "p", "σ": "o", "ς": "c", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
        # Armenian, IPA and dotless letters
        "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ı": "i", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ʟ": "l",
    }
)  # fmt: skip
# Latin letters accents do not account for.
_LATIN_LETTERS = str.maketrans({"ø": "o", "ł": "l", "đ": "d", "æ": "ae", "œ": "oe", "ħ": "h", "þ": "th"})
# Latin look-alikes inside a Cyrillic word ("гoлая" with a Latin o).
_TO_CYRILLIC = str.maketrans({"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "y": "у", "k": "к", "m": "м", "t": "т", "h": "н"})
# Leetspeak inside a word; "1" and "|" stand for i or l, so both readings are tried.
_LEET_I = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a", "$": "s", "!": "i", "+": "t", "|": "i", "€": "e"})
_LEET_L = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a", "$": "s", "!": "i", "+": "t", "|": "l", "€": "e"})

_LETTERS = re.compile(r"[^\W\d_]+")
# What separates words for certain; anything else between letters may be a disguise inside a word.
_CHUNKS = re.compile(r"[\s,;:()\[\]{}<>\"`=?/\\#&]+")
_PHRASES = re.compile(r"[,;:()\[\]{}<>\"`=?/\\#&|\n]+")  # between tags and phrases, not words
_NOT_LETTER = re.compile(r"[\W\d_]+")
_NOT_MASK = re.compile(r"[^\w*]+|[\d_]+")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")


@dataclass(frozen=True)
class Finding:
    """Why a text was refused: what read as a minor, and what read as sexual."""

    minor: str
    sexual: str

    def __str__(self) -> str:
        return f"minor: {self.minor!r}; sexual: {self.sexual!r}"


# --- the views of a text ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Views:
    cased: str  # compatibility forms folded, invisible characters out, digits in ASCII: case kept
    script: str  # case folded: for Cyrillic and CJK words
    accented: str  # case folded, look-alikes as Latin letters, accents kept ("niña")
    plain: str  # the same without accents ("nude" for "nüde")


def _views(text: str) -> _Views:
    kept = []
    for ch in unicodedata.normalize("NFKC", text):
        kind = unicodedata.category(ch)
        if kind == "Cf":  # zero-width spaces and joiners, soft hyphens, direction marks
            continue
        if kind == "Nd":
            ch = str(unicodedata.decimal(ch, 0))
        elif kind == "Pd":
            ch = "-"
        elif kind == "Zs":
            ch = " "
        kept.append(ch)
    cased = "".join(kept)
    folded = cased.casefold()
    script = " ".join(
        word.translate(_TO_CYRILLIC) if _CYRILLIC.search(word) else word for word in folded.replace("ё", "е").split(" ")
    )
    accented = folded.translate(_LOOK_ALIKES)
    plain = "".join(c for c in unicodedata.normalize("NFD", accented) if unicodedata.category(c) != "Mn")
    return _Views(cased, script, accented, plain.translate(_LATIN_LETTERS))


def _word_readings(view: str) -> list[list[str]]:
    """The view as lists of words, one list per way of reading it: letters alone; each chunk with
    leetspeak read (two ways) and separators inside it dropped; with "*" kept as a masked letter
    ("n*de"); letters set apart joined, within each tag or phrase."""
    words = _LETTERS.findall(view)
    chunks = [c for c in _CHUNKS.split(view) if c]
    readings = [words]
    for leet in (_LEET_I, _LEET_L):
        joined = [_NOT_LETTER.sub("", chunk.translate(leet)) for chunk in chunks]
        readings.append([w for w in joined if w])
    masked = [_NOT_MASK.sub("", chunk.translate(_LEET_I)) for chunk in chunks if "*" in chunk.strip("*")]
    readings.append([w for w in masked if "*" in w and w.strip("*")])
    phrases = _PHRASES.split(view)
    for leet in (_LEET_I, _LEET_L):  # "n 4 k e d"
        readings.append([run for phrase in phrases for run in _set_apart(_LETTERS.findall(phrase.translate(leet)))])
    return readings


_GLUED_MAX = 40  # two terms run together are never longer: longer words are not cut (linear time)


def _unglued(words: list[str], lexicons: Iterable[_Lexicon]) -> list[str]:
    """Words run together ("lolinude"): each long word that is two one-word terms of three letters
    or more, as those two."""
    known = list(lexicons)
    out = []
    for word in words:
        if 6 <= len(word) <= _GLUED_MAX and "*" not in word:
            for cut in range(3, len(word) - 2):
                left, right = word[:cut], word[cut:]
                if any(lex.stands_for(left) & lex.singles for lex in known) and any(
                    lex.stands_for(right) & lex.singles for lex in known
                ):
                    out += [left, right]
                    break
    return out


def _set_apart(words: list[str]) -> list[str]:
    """Runs of one- and two-letter words joined ("s h o t a" -> "shota", "lo li" -> "loli"); a
    letter repeated ("iii") counts as one."""
    return _runs_of(words, lambda word: len(word) <= 2 or len(set(word)) == 1, 2)


def _single_letter_runs(words: list[str]) -> list[str]:
    return _runs_of(words, lambda word: len(set(word)) == 1, 3)


def _runs_of(words: list[str], short: Callable[[str], bool], least: int) -> list[str]:
    """Each run of at least `least` consecutive short words, joined."""
    joined: list[str] = []
    run: list[str] = []
    for word in words:
        if short(word):
            run.append(word)
            continue
        if len(run) >= least:
            joined.append("".join(run))
        run = []
    if len(run) >= least:
        joined.append("".join(run))
    return joined


# --- matching words -----------------------------------------------------------------------------------


def _runs(word: str) -> tuple[str, tuple[int, ...]]:
    """("loooli") -> ("loli", (1, 3, 1, 1)): the letters with repeats taken out, and how often each came."""
    letters, counts = [], []
    for ch in word:
        if letters and letters[-1] == ch:
            counts[-1] += 1
        else:
            letters.append(ch)
            counts.append(1)
    return "".join(letters), tuple(counts)


class _Lexicon:
    """Terms (words and phrases) found in lists of words: a word stands for a term's word when it
    is that word with letters repeated (never fewer: "ten" is not "teen"), or its plural."""

    def __init__(self, entries: dict[str, tuple[str, ...]]) -> None:
        self.by_first: dict[str, list[tuple[str, tuple[str, ...], frozenset[str], frozenset[str]]]] = {}
        self.words: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        self.by_length: dict[int, list[str]] = {}
        self.singles: set[str] = set()  # terms of one word
        self.prefixes: list[str] = []
        for term, others in entries.items():
            parts = tuple(term.split())
            if len(parts) == 1:
                self.singles.add(term)
            not_before = frozenset(w[1:] for w in others if w.startswith("<"))
            not_after = frozenset(w for w in others if not w.startswith("<"))
            self.by_first.setdefault(parts[0], []).append((term, parts, not_before, not_after))
            for part in parts:
                if part.endswith("*"):
                    self.prefixes.append(part)
                else:
                    skeleton, counts = _runs(part)
                    self.words.setdefault(skeleton, []).append((part, counts))
                    self.by_length.setdefault(len(part), []).append(part)

    def stands_for(self, word: str) -> set[str]:
        if "*" in word:  # letters masked: any word of that length with the other letters in place
            return {
                part
                for part in self.by_length.get(len(word), ())
                if all(have in ("*", need) for have, need in zip(word, part, strict=True))
            }
        found = {p for p in self.prefixes if word.startswith(p[:-1])}
        for candidate in (word, word[:-1] if word.endswith("s") else "", word[:-2] if word.endswith("es") else ""):
            if not candidate:
                continue
            skeleton, counts = _runs(candidate)
            for part, wanted in self.words.get(skeleton, ()):
                if all(have >= need for have, need in zip(counts, wanted, strict=True)):
                    found.add(part)
        return found

    def find(self, words: list[str]) -> str | None:
        meanings = [self.stands_for(word) for word in words]
        for i, meaning in enumerate(meanings):
            for first in meaning:
                for term, parts, not_before, not_after in self.by_first.get(first, ()):
                    end = i + len(parts)
                    if end > len(words) or not all(parts[k] in meanings[i + k] for k in range(1, len(parts))):
                        continue
                    if (end < len(words) and words[end] in not_after) or (i > 0 and words[i - 1] in not_before):
                        continue
                    return term
        return None

    def find_inside(self, run: str) -> str | None:
        """A term anywhere inside a run of letters set apart one by one ("c h i l d n u d e")."""
        for parts in self.by_first.values():
            for term, words, _, _ in parts:
                if all(not w.endswith("*") for w in words) and "".join(words) in run:
                    return term
        return None


@dataclass(frozen=True)
class _Side:
    """Everything that makes a text read as one side of the rule (minor, or sexual)."""

    plain: _Lexicon  # terms without accents
    accented: _Lexicon  # terms with accents, matched only as written with them
    cyrillic: tuple[str, ...]  # word beginnings
    cjk: tuple[str, ...]  # anywhere

    def find(self, views: _Views, other: _Side) -> str | None:
        for lexicon, view, known in (
            (self.plain, views.plain, (self.plain, other.plain)),
            (self.accented, views.accented, (self.accented, other.accented)),
        ):
            readings = _word_readings(view)
            readings.append(_unglued([word for reading in readings for word in reading], known))
            for words in readings:
                if found := lexicon.find(words):
                    return found
            for phrase in _PHRASES.split(view):
                for run in _single_letter_runs(_LETTERS.findall(phrase)):
                    if found := lexicon.find_inside(run):
                        return found
        for word in _LETTERS.findall(views.script):
            for stem in self.cyrillic:
                if word.startswith(stem):
                    return stem
        squeezed = _NOT_LETTER.sub("", views.script)
        for other in terms.CJK_NOT:
            squeezed = squeezed.replace(other, "")
        return next((term for term in self.cjk if term in squeezed), None)


def _side(latin: dict[str, tuple[str, ...]], cyrillic: Iterable[str], cjk: Iterable[str], extra: Iterable[str]) -> _Side:
    plain, accented = {}, {}
    cyrillic, cjk = list(cyrillic), list(cjk)
    for term in [*latin, *extra]:
        views = _views(term.strip())
        words = views.plain.split()
        if not words:
            continue
        if _CYRILLIC.search(views.script):
            cyrillic.append(views.script.strip())
        elif not all(c.isascii() for c in views.plain.replace("*", "")):
            cjk.append(_NOT_LETTER.sub("", views.script))
        elif views.accented != views.plain:
            accented[" ".join(views.accented.split())] = latin.get(term, ())
        else:
            plain[" ".join(words)] = latin.get(term, ())
    return _Side(_Lexicon(plain), _Lexicon(accented), tuple(cyrillic), tuple(t for t in cjk if t))


@lru_cache(maxsize=8)
def _sides(extra_minor: tuple[str, ...], extra_sexual: tuple[str, ...]) -> tuple[_Side, _Side]:
    return (
        _side(terms.MINOR_LATIN, terms.MINOR_CYRILLIC, terms.MINOR_CJK, extra_minor),
        _side(terms.SEXUAL_LATIN, terms.SEXUAL_CYRILLIC, terms.SEXUAL_CJK, extra_sexual),
    )


# --- ages and school grades ---------------------------------------------------------------------------


def _alternatives(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_N = rf"(?:1[0-7]|0?[1-9]|{_alternatives(terms.NUMBER_WORDS)})"  # 1-17, in digits or words
_D = r"(?:1[0-7]|0?[1-9])"
_START = r"(?<!\w)(?<!\d[.,])"  # not the end of a longer number ("25", "2.5", "1,5") or word
_GAP = r"[\s\-_]{0,3}"
_THING = rf"(?!{_GAP}(?:{_alternatives(terms.AGED_THINGS)})\b)"
_ORDINAL = rf"(?:(?:1[0-7]|[1-9])(?:st|nd|rd|th)|{_alternatives(terms.ORDINAL_WORDS)})"
_GRADE_ORDINAL = rf"(?:(?:1[0-2]|[1-9])(?:st|nd|rd|th)|{_alternatives(terms.ORDINAL_WORDS[:12])})"
# Linear-time patterns: bounded gaps, no nested repetition.
_AGES = re.compile(
    "|".join(
        (
            rf"{_START}{_N}{_GAP}(?:y\s?/\s?o|y\.\s?o|yo)(?![a-z]){_THING}",  # 14yo, 14 y.o., 14 y/o
            rf"{_START}{_N}{_GAP}(?:years?|yrs?)\.?{_GAP}old\b{_THING}",  # 14-year-old, 14 years old, 16yr old
            rf"{_START}{_N}{_GAP}yrs?\.?(?=\s{{0,3}}(?:[,;)\]]|$))",  # "13yrs, …"
            rf"{_START}{_N}{_GAP}(?:years?|yrs?){_GAP}of{_GAP}age\b",
            rf"\baged?\s{{0,3}}:?\s{{0,3}}{_N}\b(?!\s{{0,3}}(?:months?|weeks?|days?|hours?|minutes?|percent|%|and\s+(?:up|over)|in\b|for\b|\+))",
            rf"\b(?:girl|boy|child|kid|daughter|son|lass|lad)s?\s{{1,3}}of\s{{1,3}}{_N}\b(?!\s{{0,3}}[a-z])",
            rf"\b{_ORDINAL}{_GAP}birthday",
            rf"\b{_GRADE_ORDINAL}{_GAP}grade",  # 5th grade(r), fifth-grade
            r"\bgrade[\s\-_]{0,3}(?:1[0-2]|[1-9])\b",
            rf"{_START}{_D}\s{{0,3}}(?:anos|ans)\b(?!\s{{0,3}}(?:de|d|of)\b)",  # es/pt años, anos; fr ans
            rf"{_START}{_D}{_GAP}jahre{_GAP}alt",  # de: 12 Jahre alt(e, es)
            rf"{_START}{_D}{_GAP}jahrig",  # de: 12-jährige
        )
    )
)
_AGES_SCRIPT = re.compile(rf"{_START}{_D}\s{{0,3}}(?:лет|год|歳|才|岁|歲|살|세)")
# German "Kind", "Kinder" (child, children) are English words too: read from the noun's capital, and
# not after the English words that come before the adjective.
_KIND = re.compile(r"(?<!\w)Kind(?:er|ern)?(?!\w)")
_ENGLISH_BEFORE_KIND = frozenset("a an the so very too how be is are was were most more his her their our your my one".split())


def _age(views: _Views) -> str | None:
    found = _AGES.search(views.plain) or _AGES_SCRIPT.search(views.script)
    if found:
        return found.group(0).strip()
    for match in _KIND.finditer(views.cased):
        # The words either side, from a bounded window (linear time however many matches).
        before = views.cased[max(0, match.start() - 20) : match.start()].split()[-1:]
        after = views.cased[match.end() : match.end() + 20].split()[:1]
        if (not before or before[0].lower() not in _ENGLISH_BEFORE_KIND) and (not after or after[0].lower() != "of"):
            return match.group(0)
    return None


# --- the rule -----------------------------------------------------------------------------------------


def find_minors(texts: Iterable[str], extra_minor: Iterable[str] = (), extra_sexual: Iterable[str] = ()) -> Finding | None:
    """What makes the texts together name minors and sexual content; None when they do not."""
    views = _views(" \n ".join(texts))
    minor_side, sexual_side = _sides(tuple(extra_minor), tuple(extra_sexual))
    sexual = sexual_side.find(views, minor_side)
    if sexual is None:
        return None
    minor = _age(views) or minor_side.find(views, sexual_side)
    return Finding(minor, sexual) if minor else None


def check_minors(texts: Iterable[str], extra_minor: Iterable[str] = (), extra_sexual: Iterable[str] = ()) -> None:
    """GenerationError (a neutral one) when the texts together name minors and sexual content."""
    if find_minors(texts, extra_minor, extra_sexual) is not None:
        raise GenerationError(REFUSAL)
