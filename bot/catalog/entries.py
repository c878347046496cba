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
