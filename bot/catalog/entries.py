"""What the catalog knows of one checkpoint, installed here or only known from the reference list."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bot.catalog.taxonomy import BASES

# Facets that come in layers, each from the most trusted source that has a value (see sources.py).
LAYERED = ("styles", "realism", "specialities", "training", "trigger_words")


@dataclass
class CatalogEntry:
    key: str  # "ckpt:<sha256>" for installed checkpoints, "ref:<slug>" for reference ones
    name: str  # what people type: the registry name, or the reference slug
    display_name: str
    installed: bool
    base: str  # registry family: sd1, sd2, sdxl, … ("" when unknown)
    training: str = ""
    styles: list[str] = field(default_factory=list)
    realism: list[str] = field(default_factory=list)
    specialities: list[str] = field(default_factory=list)
    nsfw: bool = False
    trigger_words: list[str] = field(default_factory=list)
    description: str = ""
    tags: list[str] = field(default_factory=list)
    source_url: str = ""
    architecture: str = ""
    autov2: str = ""
    runnable: bool = False
    known_as: str = ""  # the reference entry an installed file was recognised as
    lineage: list[str] = field(default_factory=list)
    preview: str = ""  # path of the A1111 preview image beside the file, if any
    sources: dict[str, str] = field(default_factory=dict)  # facet -> where its value came from
    native_size: int = 0  # an installed checkpoint's square size (its config's); 0: by its base
    # Currency and what it takes to run (the reference list's facts; an installed file takes them
    # from the entry it is recognised as, and its Civitai figures from `catalog enrich`).
    released: str = ""  # the line's first release: "2024-09", or "2024" where the month is not certain
    updated: str = ""  # the year of its latest version, where known
    superseded_by: str = ""  # the same makers' newer model
    settings: dict[str, Any] = field(default_factory=dict)  # from its card: sampler, steps, cfg, clip_skip, size
    # The parts a transformer-only file runs with: t5xxl, clip_l, clip_g, vae.
    needs: list[str] = field(default_factory=list)
    parameters_b: float = 0.0  # billions of parameters (Flux, SD3), for the VRAM estimate
    fast: bool = False  # made for a few steps (Turbo, Lightning, schnell)
    popularity: dict[str, Any] = field(default_factory=dict)  # Civitai's figures: downloads, thumbs_up, published

    @property
    def base_label(self) -> str:
        return BASES.get(self.base, self.base or "unknown base")

    def document(self) -> str:
        """The text that is embedded: what the checkpoint is, in words."""
        parts = [
            self.display_name,
            self.known_as,
            self.base_label,
            ", ".join(self.styles),
            ", ".join(self.realism),
            ", ".join(self.specialities),
            self.description,
            ", ".join(self.tags),
        ]
        return ". ".join(p for p in parts if p)

    def content_hash(self) -> str:
        return hashlib.sha256(self.document().encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CatalogEntry:
        return cls(**json.loads(text))
