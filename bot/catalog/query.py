"""A question about checkpoints, taken apart: facets wanted, constraints, and the words that are left.

"best realistic portrait model for sdxl, no nsfw" -> styles {photorealistic}? no: realism
{realistic}, specialities {portraits}, bases {sdxl} (a filter), sfw only (a filter), and no free
text. Words that only make the question a question ("which", "checkpoint", "best") are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.catalog.taxonomy import Facets, find_facets, mentions_sfw, words

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


@dataclass
class Query:
    text: str
    facets: Facets
    sfw_only: bool = False
    terms: list[str] = field(default_factory=list)  # content words for full-text search (facet words included)
    rest: list[str] = field(default_factory=list)  # content words no facet accounted for

    @property
    def bases(self) -> set[str]:
        return self.facets.bases

    @property
    def meaningful(self) -> bool:
        """Whether there is anything to search for at all."""
        return not self.facets.empty or bool(self.rest)


def parse_query(text: str) -> Query:
    sfw_only, without_sfw = mentions_sfw(text)
    facets = find_facets(without_sfw)
    content = [w for w in words(without_sfw) if w not in FILLER and len(w) > 1]
    rest = [w for w in words(facets.rest) if w not in FILLER and len(w) > 1]
    return Query(text=text.strip(), facets=facets, sfw_only=sfw_only, terms=content, rest=rest)
