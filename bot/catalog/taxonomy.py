"""The checkpoint taxonomy and the words people use for it.

Facets (from the design's taxonomy): training, output style, realism, base model, specialities.
Each facet value has synonyms; `find_facets` turns free text (a question, a description, a list of
Civitai tags) into facet values plus the words it did not account for. The same vocabulary serves
both sides, so "manga" in a question finds an entry whose description says "cel-shaded".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from common.families import FAMILIES

TRAINING = ("base", "fine-tuned", "merged")
STYLES = ("photorealistic", "digital painting", "render/3D", "anime", "illustration", "general purpose")
REALISM = ("realistic", "semi-realistic", "2.8D", "2.5D", "2D")
SPECIALITIES = (
    "portraits",
    "landscapes",
    "architecture",
    "products",
    "logos/icons",
    "backgrounds",
    "characters",
    "fantasy",
    "sci-fi",
    "picture editing",  # changes a given picture as told (common/editing.py): FLUX.1 Kontext
)
# Registry families a person can ask for, with display names.
BASES = {name: family.label for name, family in FAMILIES.items()}

# Phrases (lower case, matched on word boundaries, longest first) -> (facet, value).
SYNONYMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("style", "anime"): (
        "anime",
        "manga",
        "cel-shaded",
        "cel shaded",
        "cel shading",
        "waifu",
        "animagine",
        "japanese animation",
        "ghibli",
        "studio ghibli",
        "hentai",
        "danbooru",
    ),
    ("style", "photorealistic"): (
        "photorealistic",
        "photorealism",
        "photoreal",
        "photo",
        "photos",
        "photograph",
        "photographs",
        "photography",
        "real life",
        "real-life",
        "lifelike",
        "hyperrealistic",
        "hyper-realistic",
        "film photo",
        "analog",
        "raw photo",
        "dslr",
    ),
    ("style", "render/3D"): (
        "3d",
        "3d render",
        "render",
        "renders",
        "rendered",
        "cgi",
        "pixar",
        "pixar-like",
        "disney",
        "octane",
        "blender",
        "unreal engine",
        "claymation",
    ),
    ("style", "digital painting"): (
        "digital painting",
        "painting",
        "paintings",
        "painterly",
        "painted",
        "oil painting",
        "concept art",
        "artstation",
        "brush strokes",
        "impasto",
        "watercolor",
        "watercolour",
    ),
    ("style", "illustration"): (
        "illustration",
        "illustrations",
        "illustrative",
        "drawing",
        "drawn",
        "cartoon",
        "cartoons",
        "comic",
        "comics",
        "storybook",
        "children's book",
        "vector art",
        "line art",
        "ink",
        "sketch",
    ),
    ("style", "general purpose"): (
        "general purpose",
        "general-purpose",
        "all-round",
        "all-rounder",
        "all round",
        "versatile",
        "anything goes",
        "allrounder",
        "multi-purpose",
        "general",
    ),
    ("realism", "realistic"): ("realistic", "realism", "true to life"),
    ("realism", "semi-realistic"): ("semi-realistic", "semi realistic", "semirealistic", "semi-real"),
    ("realism", "2.8D"): ("2.8d",),
    ("realism", "2.5D"): ("2.5d",),
    ("realism", "2D"): ("2d", "flat colors", "flat colours", "flat shading"),
    ("speciality", "portraits"): (
        "portrait",
        "portraits",
        "headshot",
        "headshots",
        "faces",
        "face",
        "selfie",
        "people",
        "person",
    ),
    ("speciality", "landscapes"): (
        "landscape",
        "landscapes",
        "scenery",
        "nature",
        "vista",
        "vistas",
        "mountains",
        "environment",
        "environments",
    ),
    ("speciality", "architecture"): ("architecture", "architectural", "buildings", "building", "interior", "interiors"),
    ("speciality", "products"): (
        "product",
        "products",
        "product photo",
        "product shot",
        "packshot",
        "e-commerce",
        "advertising",
    ),
    ("speciality", "picture editing"): (
        "edit",
        "edits",
        "editing",
        "edit a picture",
        "edit pictures",
        "edit an image",
        "edit images",
        "edit a photo",
        "image editing",
        "picture editing",
        "photo editing",
        "instruction editing",
        "change a picture",
        "change my picture",
        "modify a picture",
        "kontext",
    ),
    ("speciality", "logos/icons"): (
        "logo",
        "logos",
        "icon",
        "icons",
        "emblem",
        "badge",
        "sticker",
        "stickers",
        "typography",
        "lettering",
        "text rendering",
        "legible text",
        "wordmark",
        "wordmarks",
    ),
    ("speciality", "backgrounds"): ("background", "backgrounds", "wallpaper", "wallpapers", "backdrop", "backdrops"),
    ("speciality", "characters"): (
        "character",
        "characters",
        "character design",
        "girls",
        "girl",
        "boys",
        "chibi",
        "cute characters",
        "mascot",
    ),
    ("speciality", "fantasy"): ("fantasy", "dragons", "dragon", "magic", "magical", "dnd", "d&d", "medieval"),
    ("speciality", "sci-fi"): ("sci-fi", "scifi", "science fiction", "cyberpunk", "futuristic", "spaceship", "mecha"),
    ("training", "base"): ("base model", "base models", "foundation model", "official", "vanilla", "stock"),
    ("training", "fine-tuned"): ("fine-tuned", "finetuned", "fine tuned", "fine-tune", "finetune", "trained"),
    ("training", "merged"): ("merge", "merged", "merges", "mix", "blend"),
    ("base", "sd1"): (
        "sd1",
        "sd1.5",
        "sd 1.5",
        "sd15",
        "sd 1.x",
        "sd1.x",
        "1.5",
        "v1.5",
        "sd 1",
        "sd1.4",
        "stable diffusion 1.5",
    ),
    ("base", "sd2"): ("sd2", "sd2.1", "sd 2.1", "sd21", "sd 2.x", "sd2.x", "2.1", "sd 2", "stable diffusion 2"),
    ("base", "sdxl"): ("sdxl", "sd xl", "xl", "sdxl 1.0", "stable diffusion xl"),
    ("base", "sd3"): ("sd3", "sd 3", "sd3.5", "sd 3.5"),
    ("base", "flux"): ("flux", "flux.1"),
    ("base", "z-image"): ("z-image", "z image", "zimage", "z-image turbo", "z-image base"),
    ("base", "chroma"): ("chroma", "chroma1", "chroma1-hd"),
    ("base", "qwen-image"): ("qwen-image", "qwen image", "qwen"),
}

NSFW_WORDS = ("nsfw", "nude", "nudity", "explicit", "adult", "18+", "porn", "lewd")
SFW_PHRASES = (
    "no nsfw",
    "not nsfw",
    "without nsfw",
    "sfw",
    "safe for work",
    "family friendly",
    "family-friendly",
    "no nudity",
    "safe",
)

_PHRASES = sorted(((phrase, key) for key, phrases in SYNONYMS.items() for phrase in phrases), key=lambda p: -len(p[0]))
_WORD = re.compile(r"[a-z0-9][a-z0-9.+&'-]*[a-z0-9+]|[a-z0-9]")


def _pattern(phrase: str) -> re.Pattern[str]:
    return re.compile(r"(?<![a-z0-9.])" + re.escape(phrase) + r"(?![a-z0-9])")


_COMPILED = [(phrase, key, _pattern(phrase)) for phrase, key in _PHRASES]
_SFW = [_pattern(p) for p in sorted(SFW_PHRASES, key=len, reverse=True)]
_NSFW = [_pattern(p) for p in NSFW_WORDS]


@dataclass
class Facets:
    """Facet values found in a text, and the text left once they are taken out."""

    styles: set[str] = field(default_factory=set)
    realism: set[str] = field(default_factory=set)
    specialities: set[str] = field(default_factory=set)
    training: set[str] = field(default_factory=set)
    bases: set[str] = field(default_factory=set)
    rest: str = ""

    def add(self, facet: str, value: str) -> None:
        {
            "style": self.styles,
            "realism": self.realism,
            "speciality": self.specialities,
            "training": self.training,
            "base": self.bases,
        }[facet].add(value)

    @property
    def empty(self) -> bool:
        return not (self.styles or self.realism or self.specialities or self.training or self.bases)


def normalise(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


def find_facets(text: str) -> Facets:
    """Every facet value named in `text`; the longest phrase wins where phrases overlap."""
    found = Facets()
    rest = normalise(text)
    for _, key, pattern in _COMPILED:
        if pattern.search(rest):
            found.add(*key)
            rest = pattern.sub(" ", rest)
    found.rest = " ".join(rest.split())
    return found


def without_phrases(text: str, facets: set[str], values: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """The text (its case kept) with every phrase of these facets ("base", "realism") or facet values
    ("photorealistic") taken out: how a refinement replaces what it contradicts."""
    for phrase, (facet, value) in _PHRASES:
        if facet in facets or value in values:
            text = re.sub(_pattern(phrase).pattern, " ", text, flags=re.IGNORECASE)
    return text


def mentions_sfw(text: str) -> tuple[bool, str]:
    """Whether the text asks for safe-for-work only ("no nsfw", "sfw"), and the text without that phrase."""
    rest = normalise(text)
    hit = False
    for pattern in _SFW:
        if pattern.search(rest):
            hit = True
            rest = pattern.sub(" ", rest)
    return hit, " ".join(rest.split())


def mentions_nsfw(text: str) -> bool:
    low = normalise(text)
    return any(p.search(low) for p in _NSFW)


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


# How close two realism grades are: a 2.5D question is half-answered by a 2.8D model.
REALISM_SCALE = {"2D": 0.0, "2.5D": 0.5, "2.8D": 0.7, "semi-realistic": 0.8, "realistic": 1.0}


def realism_closeness(wanted: str, have: str) -> float:
    gap = abs(REALISM_SCALE[wanted] - REALISM_SCALE[have])
    return max(0.0, 1.0 - 2.5 * gap)


# What a style implies about realism when nothing else says (used only for inference, never to filter).
STYLE_REALISM = {"anime": "2D", "photorealistic": "realistic"}


def check_facets(facets: dict[str, Any], *, where: str) -> None:
    """Refuse facet values outside the taxonomy (a typo in an owner's edit or in the reference list)."""
    allowed = {"styles": STYLES, "realism": REALISM, "specialities": SPECIALITIES}
    for facet, values in allowed.items():
        for value in facets.get(facet) or []:
            if value not in values:
                raise ValueError(f"{where}: {value!r} is not a known {facet[:-1]} ({', '.join(values)})")
    training = facets.get("training") or ""
    if training and training not in TRAINING:
        raise ValueError(f"{where}: {training!r} is not a kind of training ({', '.join(TRAINING)})")


FACET_KEYS = ("styles", "realism", "specialities", "training", "trigger_words")


_VOCABULARY = {
    "styles": ("style", STYLES),
    "realism": ("realism", REALISM),
    "specialities": ("speciality", SPECIALITIES),
}


def parse_facet_list(facet: str, text: str) -> list[str]:
    """An owner's comma-separated values for one facet, each mapped onto the taxonomy ("manga" -> anime).

    An empty text clears the facet. Anything that does not map raises ValueError naming the choices.
    """
    synonym_facet, vocabulary = _VOCABULARY[facet]
    values: list[str] = []
    for raw in text.split(","):
        word = normalise(raw)
        if not word:
            continue
        exact = next((v for v in vocabulary if v.lower() == word), None)
        if exact is None:
            found = find_facets(word)
            hits = {"style": found.styles, "realism": found.realism, "speciality": found.specialities}[synonym_facet]
            if len(hits) != 1 or found.rest:
                raise ValueError(f"{raw.strip()!r} is not a known {synonym_facet}; choose from {', '.join(vocabulary)}")
            exact = next(iter(hits))
        if exact not in values:
            values.append(exact)
    return values


def facet_changes(
    *,
    styles: str | None = None,
    realism: str | None = None,
    specialities: str | None = None,
    training: str | None = None,
    trigger_words: str | None = None,
) -> dict[str, Any] | None:
    """Owner edits from text options (None: unchanged, "": cleared); None when nothing is asked."""
    changes: dict[str, Any] = {}
    for facet, text in (("styles", styles), ("realism", realism), ("specialities", specialities)):
        if text is not None:
            changes[facet] = parse_facet_list(facet, text)
    if training is not None:
        value = normalise(training)
        if value and value not in TRAINING:
            raise ValueError(f"{training!r} is not a kind of training; choose from {', '.join(TRAINING)}")
        changes["training"] = value
    if trigger_words is not None:
        changes["trigger_words"] = [w.strip() for w in trigger_words.split(",") if w.strip()]
    return changes or None
