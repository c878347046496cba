"""From `<lora:name:te:unet>` tags and embedding names in a prompt to the LoRAs and embeddings a job
uses, or one line saying why not.

Followed (facts, not code) from AUTOMATIC1111/stable-diffusion-webui:
- modules/processing.py: extra-network tags are read from the positive prompt, before prompt editing
  is resolved, so a LoRA applies to every step; tags in the negative prompt are not LoRAs.
- modules/extra_networks.py `ExtraNetworkParams`: the tag's parts after the name are split on `:`;
  a part with `=` is named (`te=0.5`, `unet=1`), the others positional.
- extensions-builtin/Lora/extra_networks_lora.py: `<lora:name:w>` sets both strengths to w;
  `<lora:name:te:unet>` sets the text encoder's, then the UNet's; named `te=`/`unet=` override;
  `<lyco:…>` is the same (the LyCORIS extension's tag, honoured by A1111's built-in Lora).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bot.generation.checkpoint_ref import CheckpointRef
from bot.networks.detection import BASE_LABELS
from bot.networks.registry import EmbeddingRegistry, LoraRegistry, NetworkEntry
from bot.rules.limits import GenerationError, Limits
from bot.rules.policy import check_nsfw
from common.prompt_syntax import ExtraNetwork, extract_extra_networks
from common.protocol import EmbeddingUse, LoraUse

LORA_TAGS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraTag:
    name: str
    te: float
    unet: float
    text: str  # as written


def with_lora_tag(prompt: str, name: str, strength: float) -> str:
    """The prompt with a LoRA picked from a menu written in as a tag, so the picture's parameters show
    it and anyone can reuse it."""
    name = name.strip()
    if not name or any(ch in name for ch in "<>:"):
        raise GenerationError(f"{name!r} is not a LoRA name")
    if not math.isfinite(strength):
        raise GenerationError("the LoRA strength must be a finite number")
    return f"{prompt.rstrip()} <lora:{name}:{strength:g}>"


def lora_strength(use: LoraUse) -> str:
    """A LoRA's strengths as people write them: "0.7", or "0.5/1" (text encoder / UNet) when they differ."""
    return f"{use.te:g}" if use.te == use.unet else f"{use.te:g}/{use.unet:g}"


def _number(tag: ExtraNetwork, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise GenerationError(f"{tag.text}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise GenerationError(f"{tag.text}: the strength must be a finite number")
    return number


def read_tag(tag: ExtraNetwork) -> LoraTag:
    """A1111's reading of one `<lora:…>` tag's strengths."""
    positional = [a for a in tag.args if "=" not in a]
    named = dict(a.split("=", 1) for a in tag.args if "=" in a)
    unknown = set(named) - {"te", "unet", "dyn"}
    if unknown:
        raise GenerationError(f"{tag.text}: unknown setting {sorted(unknown)[0]!r}; use te= or unet=")
    te = _number(tag, positional[0]) if positional else 1.0
    te = _number(tag, named["te"]) if "te" in named else te
    unet = _number(tag, positional[1]) if len(positional) > 1 else te
    unet = _number(tag, named["unet"]) if "unet" in named else unet
    return LoraTag(tag.name.strip(), te, unet, tag.text)


def lora_tags(prompt: str) -> list[LoraTag]:
    """The LoRA tags of a positive prompt, in order; a LoRA named twice is refused."""
    tags = [read_tag(t) for t in extract_extra_networks(prompt)[1] if t.kind.lower() in LORA_TAGS]
    seen: set[str] = set()
    for tag in tags:
        if tag.name.lower() in seen:
            raise GenerationError(f"the LoRA {tag.name} is named twice; give it once")
        seen.add(tag.name.lower())
    return tags


async def resolve_loras(
    registry: LoraRegistry, prompt: str, checkpoint: CheckpointRef, limits: Limits, nsfw_allowed: bool
) -> tuple[LoraUse, ...]:
    """The LoRAs `prompt` asks for, checked against the checkpoint and the limits (the rules' one copy)."""
    tags = lora_tags(prompt)
    if len(tags) > limits.max_loras:
        raise GenerationError(f"at most {limits.max_loras} LoRAs per picture; this prompt names {len(tags)}")
    uses: list[LoraUse] = []
    seen: set[str] = set()
    for tag in tags:
        entry = await registry.find(tag.name)
        if entry is None:
            raise GenerationError(f"no LoRA named {tag.name!r}; /loras list shows what is installed")
        if entry.sha256 in seen:  # by its name and its alias, say
            raise GenerationError(f"the LoRA {entry.name} is named twice; give it once")
        seen.add(entry.sha256)
        _check(entry, tag, checkpoint, limits)
        check_nsfw(f"the LoRA {entry.name}", entry.nsfw, nsfw_allowed)
        if tag.te == 0 and tag.unet == 0:
            continue  # no effect at all: the job runs as it would without it
        uses.append(LoraUse(tag.name, str(entry.path), entry.sha256, entry.short_hash, tag.te, tag.unet))
    return tuple(uses)


def _check(entry: NetworkEntry, tag: LoraTag, checkpoint: CheckpointRef, limits: Limits) -> None:
    if entry.status != "present":
        raise GenerationError(f"the LoRA {entry.name} is missing from its folder; an admin needs to rescan")
    if not entry.loadable:
        raise GenerationError(f"the LoRA {entry.name} cannot be applied: {entry.reason}")
    if entry.base != checkpoint.family:
        wanted = BASE_LABELS.get(entry.base, entry.base)
        raise GenerationError(
            f"the LoRA {entry.name} is for {wanted} and {checkpoint.name} is {checkpoint.architecture}; "
            f"choose a {wanted} checkpoint"
        )
    strengths = (
        [("strength", tag.te)]
        if tag.te == tag.unet
        else [("text-encoder strength", tag.te), ("UNet strength", tag.unet)]
    )
    for label, value in strengths:
        if abs(value) > limits.max_lora_weight:
            raise GenerationError(
                f"{tag.text}: {label} {value:g} is outside -{limits.max_lora_weight:g} to {limits.max_lora_weight:g}"
            )


def names_word(name: str, text: str) -> bool:
    """Whether `text` holds `name` as a word, in any case (CLIP lowercases; the worker then matches the
    name's tokens exactly, as A1111 does)."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE) is not None


async def resolve_embeddings(
    registry: EmbeddingRegistry, texts: list[str], checkpoint: CheckpointRef, nsfw_allowed: bool
) -> tuple[tuple[EmbeddingUse, ...], tuple[str, ...]]:
    """The embeddings whose names the texts use, for this checkpoint; and a note naming those that are
    for another model (A1111 skips them too)."""
    uses: list[EmbeddingUse] = []
    skipped: list[str] = []
    for entry in await registry.list(status="present"):
        if not any(names_word(entry.name, text) for text in texts):
            continue
        if not entry.loadable or entry.base != checkpoint.family:
            skipped.append(f"{entry.name} ({entry.label})")
            continue
        check_nsfw(f"the embedding {entry.name}", entry.nsfw, nsfw_allowed)
        uses.append(EmbeddingUse(entry.name, str(entry.path), entry.sha256, entry.short_hash))
    notes = (f"embeddings for another model are not applied: {', '.join(skipped)}",) if skipped else ()
    return tuple(uses), notes
