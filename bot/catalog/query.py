"""A question about checkpoints, taken apart: facets wanted, constraints, and the words that are left.

"best realistic portrait model for sdxl, no nsfw" -> styles {photorealistic}? no: realism
{realistic}, specialities {portraits}, bases {sdxl} (a filter), sfw only (a filter), and no free
text. Words that only make the question a question ("which", "checkpoint", "best") are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.catalog.taxonomy import Facets, find_facets, mentions_sfw, without_phrases, words

FILLER = frozenset(
    """a an the and or of for to in on at with by from as is are be it its this that these those i me my we
    you your our which what whats what's who whom where when how why do does did can could should would will
    want need looking look find recommend recommendation suggest suggestion suggestions give show tell any some
    something anything good great best better nice top most very really more less like please model models
    checkpoint checkpoints ckpt safetensors stable diffusion sd one ones use using make making generate
    generating create creating pictures picture images image art style styles type kind sort i'm im
    there here get got have has than but not no yes ok okay thanks thank hi hello hey bot easel about into
    around good-looking high quality""".split()
)


# Constraints people state beside the facets: how current ("newest", "classic"), the card they
# have ("on 6 GB", "low vram"), and speed ("fast", "few steps", "turbo").
_NEWEST = re.compile(r"\b(?:newest|latest|newer|most recent|recent|current|modern|up to date|state of the art|sota)\b")
_CLASSIC = re.compile(r"\b(?:classic|classics|older|old school|old-school|oldschool|legacy)\b")
_VRAM = re.compile(r"\b(\d{1,2}(?:\.\d)?)\s*(?:gb|gig|gigs|gib|g)\b(?:\s*(?:of\s+)?(?:vram|gpu|card|video memory))?")
_LOW_VRAM = re.compile(r"\b(?:low vram|little vram|weak gpu|potato(?: pc| gpu)?|old gpu|laptop gpu)\b")
_FAST = re.compile(
    r"\b(?:fast|faster|fastest|quick|quicker|speedy|few steps|fewer steps|turbo|lightning|[1-8] steps?)\b"
)
_INSTALLED = re.compile(r"\b(?:installed only|only installed|installed here|only what is installed|available here)\b")
LOW_VRAM_GB = 6.0


@dataclass
class Query:
    text: str
    facets: Facets
    sfw_only: bool = False
    terms: list[str] = field(default_factory=list)  # content words for full-text search (facet words included)
    rest: list[str] = field(default_factory=list)  # content words no facet accounted for
    era: str = ""  # "newest" or "classic": how the currency prior leans
    max_vram_gb: float = 0.0  # 0: not said
    fast: bool = False
    installed_only: bool = False

    @property
    def bases(self) -> set[str]:
        return self.facets.bases

    @property
    def meaningful(self) -> bool:
        """Whether there is anything to search for at all."""
        return not self.facets.empty or bool(self.rest) or self.constrained

    @property
    def constrained(self) -> bool:
        return bool(self.era or self.max_vram_gb or self.fast or self.installed_only)


def _constraints(text: str) -> tuple[str, float, bool, bool, str]:
    """(era, largest VRAM in GB, fast, installed only, the text without them)."""
    era = "newest" if _NEWEST.search(text) else "classic" if _CLASSIC.search(text) else ""
    vram = 0.0
    found = _VRAM.search(text)
    if found and 2 <= float(found.group(1)) <= 48:
        vram = float(found.group(1))
    elif _LOW_VRAM.search(text):
        vram = LOW_VRAM_GB
    fast = bool(_FAST.search(text))
    installed = bool(_INSTALLED.search(text))
    for pattern in (_NEWEST, _CLASSIC, _VRAM, _LOW_VRAM, _FAST, _INSTALLED):
        text = pattern.sub(" ", text)
    return era, vram, fast, installed, text


def parse_query(text: str) -> Query:
    sfw_only, without_sfw = mentions_sfw(text)
    era, vram, fast, installed, without_sfw = _constraints(without_sfw)
    facets = find_facets(without_sfw)
    content = [w for w in words(without_sfw) if w not in FILLER and len(w) > 1]
    rest = [w for w in words(facets.rest) if w not in FILLER and len(w) > 1]
    return Query(
        text.strip(), facets, sfw_only, content, rest, era=era, max_vram_gb=vram, fast=fast, installed_only=installed
    )


# The refinement buttons under an answer: what each adds to the question.
REFINEMENTS = {
    "realistic": ("More realistic", "more realistic"),
    "stylised": ("More stylised", "stylised illustration"),
    "sdxl": ("SDXL only", "sdxl only"),
    "installed": ("Only installed", "installed only"),
}


_STYLISED = re.compile(r"\b(?:more\s+)?styli[sz]ed(?:\s+illustrations?)?\b", re.IGNORECASE)


def refined(question: str, addition: str) -> str:
    """A question with a constraint added, as an answer's refinement buttons ask it again ("anime" +
    "SDXL only" -> "anime, SDXL only"): the later words are read with the earlier ones. What the
    addition contradicts goes first, so refinements can be pressed back and forth: another base
    ("sd1.5" before "SDXL only"), another realism grade or "stylised" before "more realistic",
    realism and photo words before "stylised"."""
    wanted = find_facets(addition)
    text = question
    if wanted.bases:
        text = without_phrases(text, {"base"})
    if wanted.realism:
        text = without_phrases(_STYLISED.sub(" ", text), {"realism"})
    if _STYLISED.search(addition):
        text = re.sub(r"\bmore\s+(?=realistic\b)", " ", text, flags=re.IGNORECASE)
        text = without_phrases(text, {"realism"}, {"photorealistic"})
    # Tidy what a removal leaves: empty list items, doubled spaces, a dangling "more".
    parts = [" ".join(p.split()) for p in text.split(",")]
    text = ", ".join(p for p in parts if p and p.lower() not in {"more", "only"})
    text = text.strip().rstrip("?.!,")
    return f"{text}, {addition.strip()}" if text else addition.strip()
