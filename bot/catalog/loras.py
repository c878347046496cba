"""LoRAs that fit a catalog question, for the checkpoint family the answer is about.

A LoRA fits when the question's words (style, realism and subject words included) appear in what is
known of it: its name, title, alias, trigger words, description and Civitai tags. Only LoRAs that can
apply to the family are offered ("anime" for an SDXL answer: anime LoRAs for SDXL), best fit first.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.catalog.query import Query
from bot.catalog.taxonomy import words
from bot.networks.registry import NetworkEntry

MAX_SUGGESTED = 3


@dataclass(frozen=True)
class LoraHit:
    entry: NetworkEntry
    matched: tuple[str, ...]  # the question's words found in what is known of the LoRA

    def to_dict(self) -> dict[str, object]:
        e = self.entry
        return {"name": e.name, "base": e.base_label, "use": f"<lora:{e.name}:1>", "matched": list(self.matched)}


def _known_words(entry: NetworkEntry) -> set[str]:
    tags = (entry.metadata.get("civitai") or {}).get("tags") or []
    text = " ".join([entry.name, entry.alias, entry.display_name, entry.description, *entry.trigger_words, *tags])
    return set(words(text.replace("-", " ").replace("_", " ")))


def fitting_loras(
    entries: list[NetworkEntry], query: Query, family: str, *, allow_nsfw: bool, limit: int = MAX_SUGGESTED
) -> list[LoraHit]:
    wanted = set(query.terms) | query.facets.styles | query.facets.specialities | query.facets.realism
    hits = []
    for entry in entries:
        if entry.status != "present" or not entry.loadable or entry.base != family or (entry.nsfw and not allow_nsfw):
            continue
        matched = tuple(sorted(wanted & _known_words(entry)))
        if matched:
            hits.append(LoraHit(entry, matched))
    hits.sort(key=lambda h: (-len(h.matched), h.entry.name.lower()))
    return hits[:limit]
