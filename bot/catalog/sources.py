"""Where a catalog entry's facets come from, in order of trust.

1. owner      what a bot owner set (`checkpoints edit --styles …`, `/admin edit`)
2. metadata   the file's own safetensors metadata (modelspec title, description, tags, trigger phrase)
3. sidecar    A1111 files beside it (NAME.civitai.info, the user-metadata NAME.json)
4. civitai    a by-hash lookup on Civitai (cached in civitai_lookups)
5. reference  the bundled list of well-known checkpoints, when the file is recognised by name
6. inferred   words in the name, description and tags

Each facet takes its value from the first layer that has one, and remembers which layer that was,
so an answer can say "anime (set by an owner)" or "anime (guessed from the name)".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bot.catalog.entries import LAYERED, CatalogEntry
from bot.catalog.taxonomy import STYLE_REALISM, check_facets, find_facets
from bot.checkpoints.registry import CheckpointEntry, slugify
from bot.generation.checkpoint_ref import CheckpointRef
from common.editing import edit_model

REFERENCE_FILE = Path(__file__).with_name("reference.json")
ORDER = ("owner", "metadata", "sidecar", "civitai", "reference", "inferred")


@dataclass
class Layer:
    """One source's opinion: any facet it has no value for is left empty."""

    source: str
    styles: list[str] = field(default_factory=list)
    realism: list[str] = field(default_factory=list)
    specialities: list[str] = field(default_factory=list)
    training: str = ""
    trigger_words: list[str] = field(default_factory=list)
    description: str = ""


def layer_from_text(source: str, text: str, **extra: Any) -> Layer:
    """A layer from free text (tags, a description, a title): the taxonomy's words found in it."""
    found = find_facets(text)
    training = ""
    for value in ("merged", "fine-tuned", "base"):  # most specific first
        if value in found.training:
            training = value
            break
    return Layer(
        source,
        styles=sorted(found.styles),
        realism=sorted(found.realism),
        specialities=sorted(found.specialities),
        training=training,
        **extra,
    )


def owner_layer(facets: dict[str, Any]) -> Layer:
    return Layer(
        "owner",
        styles=list(facets.get("styles") or []),
        realism=list(facets.get("realism") or []),
        specialities=list(facets.get("specialities") or []),
        training=str(facets.get("training") or ""),
        trigger_words=list(facets.get("trigger_words") or []),
    )


def metadata_layer(metadata: dict[str, Any]) -> Layer:
    spec = metadata.get("modelspec") or {}
    text = " . ".join(str(spec.get(k, "")) for k in ("title", "description", "tags"))
    trigger = str(spec.get("trigger_phrase") or "").strip()
    return layer_from_text(
        "metadata",
        text,
        trigger_words=[trigger] if trigger else [],
        description=str(spec.get("description") or "").strip(),
    )


def sidecar_layer(sidecars: dict[str, Any]) -> Layer:
    civitai = sidecars.get("civitai") or {}
    user = sidecars.get("user_metadata") or {}
    words = [w for w in civitai.get("trained_words") or [] if isinstance(w, str) and w.strip()]
    activation = str(user.get("activation text") or "").strip()
    text = " . ".join([" , ".join(civitai.get("tags") or []), str(user.get("description") or "")])
    return layer_from_text(
        "sidecar",
        text,
        trigger_words=([activation] if activation else []) + words,
        description=str(user.get("description") or civitai.get("description") or "").strip(),
    )


def civitai_layer(payload: dict[str, Any]) -> Layer:
    """From a cached by-hash answer (see civitai.py for its shape)."""
    text = " . ".join([" , ".join(payload.get("tags") or []), str(payload.get("model_name") or "")])
    layer = layer_from_text(
        "civitai",
        text,
        trigger_words=[w for w in payload.get("trained_words") or [] if isinstance(w, str) and w.strip()],
        description=str(payload.get("description") or "").strip(),
    )
    checkpoint_type = str(payload.get("checkpoint_type") or "").lower()
    if checkpoint_type in ("merge", "trained"):
        layer.training = "merged" if checkpoint_type == "merge" else "fine-tuned"
    return layer


def reference_layer(ref: CatalogEntry) -> Layer:
    return Layer(
        "reference",
        styles=list(ref.styles),
        realism=list(ref.realism),
        specialities=list(ref.specialities),
        training=ref.training,
        trigger_words=list(ref.trigger_words),
        description=ref.description,
    )


def resolve(layers: list[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each layered facet from the first layer that has it; and which layer that was."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for facet in LAYERED:
        for layer in layers:
            value = getattr(layer, facet)
            if value:
                values[facet], sources[facet] = value, layer.source
                break
        else:
            values[facet] = "" if facet == "training" else []
    if not values["realism"]:  # an anime model is 2D, a photo model realistic, unless a source says otherwise
        implied = sorted({STYLE_REALISM[s] for s in values["styles"] if s in STYLE_REALISM})
        if implied:
            values["realism"], sources["realism"] = implied, "inferred"
    return values, sources


# --- the reference list -----------------------------------------------------------------------


@cache
def reference_entries() -> tuple[CatalogEntry, ...]:
    data = json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))
    entries = []
    for item in data["entries"]:
        check_facets(item, where=item["name"])
        entries.append(
            CatalogEntry(
                key=f"ref:{slugify(item['name'])}",
                name=slugify(item["name"]),
                display_name=item["name"],
                installed=False,
                base=item["base"],
                training=item.get("training", ""),
                styles=item.get("styles", []),
                realism=item.get("realism", []),
                specialities=item.get("specialities", []),
                nsfw=bool(item.get("nsfw", False)),
                trigger_words=item.get("trigger_words", []),
                description=item.get("description", ""),
                source_url=item.get("source", ""),
                tags=[alias for alias in item.get("aliases", [])],
                sources={facet: "reference" for facet in LAYERED},
                **{key: item[key] for key in REFERENCE_FACTS if key in item},
            )
        )
    return tuple(entries)


# The reference list's facts about currency and running that an installed file recognised as one of
# its entries takes over.
REFERENCE_FACTS = ("released", "updated", "superseded_by", "settings", "needs", "parameters_b", "fast")


MIN_PREFIX = 6
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
# A trailing version: one or more of [_ .-]? v? digits (.digits)* [a-z]? digits*, as in "_v2", "-1.5",
# " V6 XL"'s "v6"... read by trailing_version() below (a regex for it backtracks exponentially on
# "1111111111111111111!": minutes for a 22-character name).
_SEPARATORS = "_ .-"


def squash(text: str) -> str:
    """Lower case, letters and digits only: how a question and a name are compared."""
    return _NOT_ALNUM.sub("", text.lower())


def match_key(name: str) -> str:
    """A file or model name reduced for recognition: case, punctuation and a trailing version dropped."""
    low = name.lower().rsplit(".", 1)[0] if name.lower().endswith((".safetensors", ".ckpt")) else name.lower()
    stem = low[: len(low) - trailing_version(low)] or low
    return _NOT_ALNUM.sub("", stem)


def trailing_version(text: str) -> int:
    """How many characters at the end of `text` are a version (see above; 0 for none): the longest
    such suffix, found in one pass from the end by following every way of reading it at once."""
    # Read backwards, a version unit is digits* [a-z]? (digits+ ".")* digits+ "v"? [_ .-]?; the states
    # say where in a unit the characters read so far may be. "end" states close a unit.
    starts = {"start"}
    states: set[str] = set()
    longest = 0
    for count, ch in enumerate(reversed(text), 1):
        digit, letter = ch.isdecimal(), "a" <= ch <= "z"
        following: set[str] = set()
        for state in states | starts:
            if state in ("start", "lead") and digit:
                following |= {"lead", "group", "last"}
            elif state in ("start", "lead") and letter:
                following.add("letter")
            elif state in ("letter", "dot") and digit:
                following |= {"group", "last"}
            elif state == "group" and digit:
                following.add("group")
            elif state == "group" and ch == ".":
                following.add("dot")
            elif state == "last" and digit:
                following.add("last")
            elif state == "last" and ch == "v":
                following.add("v")
            if state in ("last", "v") and ch in _SEPARATORS:
                following.add("separator")
        states = following
        if not states:
            break
        if states & {"last", "v", "separator"}:
            longest = count
            starts = {"start"}
        else:
            starts = set()
    return longest


def spellings(name: str) -> set[str]:
    """A name as questions and other sources may write it: squashed whole, or as match_key reduces it."""
    return {squash(name), match_key(name)}


@cache
def _reference_by_key() -> dict[str, CatalogEntry]:
    table: dict[str, CatalogEntry] = {}
    for ref in reference_entries():
        for alias in (ref.display_name, *ref.tags):
            table.setdefault(match_key(alias), ref)
    return table


def recognise(*names: str) -> CatalogEntry | None:
    """The reference entry a file is (by its file name, registry name or Civitai model name), if any."""
    table = _reference_by_key()
    keys = [match_key(name) for name in names if name]
    for key in keys:
        if key in table:
            return table[key]
    for key in keys:  # "juggernautXL_v9Rundiffusion": the longest known name it starts with
        prefixes = [k for k in table if len(k) >= MIN_PREFIX and key.startswith(k)]
        if prefixes:
            return table[max(prefixes, key=len)]
    return None


# --- installed checkpoints ----------------------------------------------------------------------


def installed_entry(ckpt: CheckpointEntry, civitai: dict[str, Any] | None) -> CatalogEntry:
    sidecars = ckpt.sidecars or {}
    metadata = (ckpt.inspection or {}).get("metadata") or {}
    civitai_names = [
        str((civitai or {}).get("model_name") or ""),
        str((sidecars.get("civitai") or {}).get("model_name") or ""),
    ]
    ref = recognise(Path(ckpt.relative_path).name, ckpt.name, ckpt.display_name, *civitai_names)
    owner = owner_layer(ckpt.facets)
    layers = [owner, metadata_layer(metadata), sidecar_layer(sidecars)]
    if civitai:
        layers.append(civitai_layer(civitai))
    if ref is not None:
        layers.append(reference_layer(ref))
    layers.append(
        layer_from_text("inferred", " . ".join([ckpt.display_name, ckpt.name, ckpt.description, " , ".join(ckpt.tags)]))
    )
    values, sources = resolve(layers)
    if edit_model(ckpt.family, ckpt.variant) is not None and "picture editing" not in values["specialities"]:
        # what the file is (an edit model), whatever any source says it is good at
        values["specialities"], sources["specialities"] = sorted([*values["specialities"], "picture editing"]), "architecture"
    if ckpt.training and not owner.training:  # the file's own merge recipe outranks guesses
        values["training"], sources["training"] = ckpt.training, "metadata"
    description = ckpt.description or next((layer.description for layer in layers if layer.description), "")
    source_url = ""
    if civitai and civitai.get("model_id"):
        source_url = f"https://civitai.com/models/{civitai['model_id']}"
    elif (sidecars.get("civitai") or {}).get("model_id"):
        source_url = f"https://civitai.com/models/{sidecars['civitai']['model_id']}"
    elif ref is not None:
        source_url = ref.source_url
    return CatalogEntry(
        key=f"ckpt:{ckpt.sha256}",
        name=ckpt.name,
        display_name=ckpt.display_name,
        installed=True,
        base=ckpt.family,
        nsfw=ckpt.nsfw or bool((civitai or {}).get("nsfw")),
        description=description,
        tags=list(ckpt.tags),
        source_url=source_url,
        architecture=ckpt.architecture,
        autov2=ckpt.autov2,
        runnable=ckpt.runnable and ckpt.status == "present",
        known_as=ref.display_name if ref is not None else "",
        lineage=[str(p.get("name") or p.get("autov2") or "") for p in ckpt.lineage if isinstance(p, dict)],
        preview=ckpt.preview_path or "",
        sources=sources,
        native_size=CheckpointRef.from_entry(ckpt).native_size,
        popularity={k: civitai[k] for k in ("downloads", "thumbs_up", "published") if k in (civitai or {})},
        needs=[str(role) for role, _ in (ckpt.inspection or {}).get("architecture_info", {}).get("needs", [])],
        **{key: getattr(ref, key) for key in REFERENCE_FACTS if ref is not None and key != "needs"},
        **values,
    )
