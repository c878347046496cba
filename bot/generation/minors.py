"""The one prompt rule no place can relax: prompts that put minors and sexual content together are
refused before anything is queued, in every channel, DM and age-restricted channel, and on the CLI.

The words are matched after the usual disguises are undone: case and accents, leetspeak digits and
symbols, letters spaced or dotted apart ("l o l i", "l.o.l.i"), letters repeated ("loooli"), words
run together with separators ("nsfw_loli"). Ages under 18 count as minors ("12yo", "12 year old").
Owners may add words (EASEL_MINOR_TERMS, EASEL_SEXUAL_TERMS) but not remove these.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from bot.generation.requests import GenerationError

MINOR_TERMS = (
    "child", "children", "kid", "kids", "kiddie", "minor", "minors", "underage", "under age", "loli", "lolis",
    "lolicon", "shota", "shotas", "shotacon", "toddler", "toddlers", "infant", "infants",
    "preteen", "pre teen", "preteens", "tween", "tweens", "teen", "teens", "teenage", "teenager", "teenagers",
    "young girl", "young girls", "little girl", "little girls", "young boy", "young boys", "little boy",
    "little boys", "jailbait", "pedo", "pedophile", "paedophile", "schoolchild", "grade schooler",
    "elementary schooler", "middle schooler",
)  # fmt: skip
SEXUAL_TERMS = (
    "nude", "nudes", "nudity", "naked", "nsfw", "sex", "sexy", "sexual", "sexualized", "porn", "porno",
    "pornographic", "hentai", "explicit", "erotic", "erotica", "lewd", "nipple", "nipples", "genital",
    "genitals", "genitalia", "penis", "vagina", "pussy", "cock", "topless", "bottomless", "undressed",
    "no clothes", "without clothes", "lingerie", "orgasm", "cum", "cumshot", "semen", "masturbate",
    "masturbating", "masturbation", "fellatio", "blowjob", "handjob", "intercourse", "spread legs", "rape",
    "bdsm", "fetish", "ahegao", "breasts", "boobs", "tits", "ass", "butt", "panties", "seductive", "onlyfans",
)  # fmt: skip

_LEET = str.maketrans({"0": "o", "1": "i", "!": "i", "|": "i", "3": "e", "4": "a", "@": "a", "5": "s", "$": "s", "7": "t", "+": "t", "8": "b"})
_AGE = re.compile(r"(?<!\d)(?:[0-9]|1[0-7])\s*(?:-\s*)?(?:yo|y/o|y\.o\.|yrs?|years?)(?:\s*-?\s*old)?\b")


_SPACED = re.compile(r"\b(?:[a-z] ){2,}[a-z]\b")


def normalise(text: str) -> str:
    """Lower-case ASCII words, disguises undone, separated by single spaces."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    plain = plain.translate(_LEET)
    plain = re.sub(r"[^a-z]+", " ", plain)
    plain = re.sub(r"([a-z])\1+", r"\1", plain)  # "loooli" -> "loli" (the terms are read the same way)
    return " ".join(plain.split())


def _found(words: str, terms: Iterable[str]) -> str | None:
    # Letters set apart one by one ("l o l i", "N.U.D.E"): such a run is searched for any term inside it.
    runs = [m.group(0).replace(" ", "") for m in _SPACED.finditer(words)]
    for term in terms:
        wanted = normalise(term)
        if not wanted:
            continue
        if re.search(rf"(?<![a-z]){re.escape(wanted)}(?![a-z])", words):
            return term
        if any(wanted.replace(" ", "") in run for run in runs):
            return term
    return None


def check_minors(
    texts: Iterable[str], extra_minor: Iterable[str] = (), extra_sexual: Iterable[str] = ()
) -> None:
    """GenerationError (a neutral one) when the texts together name minors and sexual content."""
    joined = " \n ".join(texts)
    words = normalise(joined)
    minor = _AGE.search(joined.lower()) or _found(words, (*MINOR_TERMS, *extra_minor))
    if minor and _found(words, (*SEXUAL_TERMS, *extra_sexual)):
        raise GenerationError("this prompt cannot be generated here or anywhere; please rephrase it")
