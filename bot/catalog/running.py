"""What it takes to run a catalog entry, and how current it is: the facts an answer states beside
its fit ("SDXL: 1024², about 8 GB of VRAM", "needs a T5-XXL text encoder") and the currency prior the
ranking leans on.

VRAM figures are estimates for one picture at the native size, as A1111/Forge users quote them: an
SD 1.x model in about 4 GB, SDXL in about 8 GB; a Flux or SD 3.x transformer at 16 bits takes two
bytes per parameter, or one with fp8 weights, and its T5-XXL encoder (4.7 B parameters) is loaded
apart from it (Easel offloads whole models to CPU RAM between uses, so the larger of the two counts),
plus about 2 GB for activations, VAE and CLIP, rounded up.
"""

from __future__ import annotations

import math
import re

from bot.catalog.entries import CatalogEntry
from bot.checkpoints.architecture import needs_label
from common.families import FAMILIES

UNET_VRAM_GB = {"sd1": 4.0, "sd2": 5.0, "sdxl": 8.0}
# FLUX.1, SD 3.5 Large, Z-Image, Chroma: when the entry does not say
DEFAULT_PARAMETERS_B = {"flux": 11.9, "sd3": 8.1, "z-image": 6.15, "chroma": 8.9, "qwen-image": 20.4}
T5_PARAMETERS_B = 4.7
OVERHEAD_GB = 2.0
EARLIEST = 2022.5  # SD 1.x's public release: the start of the currency scale


def vram_gb(entry: CatalogEntry, bytes_per_parameter: float = 2.0) -> float:
    """About how much VRAM the entry needs (16-bit weights; 1 byte per parameter: fp8)."""
    if entry.base in UNET_VRAM_GB:
        return UNET_VRAM_GB[entry.base]
    parameters = entry.parameters_b or DEFAULT_PARAMETERS_B.get(entry.base, 0.0)
    if not parameters:
        return 0.0
    t5 = T5_PARAMETERS_B if entry.base in DEFAULT_PARAMETERS_B else 0.0
    return float(math.ceil(max(parameters, t5) * bytes_per_parameter + OVERHEAD_GB))


def least_vram_gb(entry: CatalogEntry) -> float:
    """The smallest card it runs on: fp8 weights for a transformer, the usual figure otherwise."""
    return vram_gb(entry, 1.0) if entry.base not in UNET_VRAM_GB else vram_gb(entry)


def running_line(entry: CatalogEntry) -> str:
    """What it takes to run, e.g. "SDXL: 1024², about 8 GB of VRAM", and the parts a file lacks."""
    family = FAMILIES.get(entry.base)
    side = entry.native_size or (family.native_size if family else 512)
    text = f"{entry.base_label}: {side}²"
    full = vram_gb(entry)
    if full:
        text += f", about {full:g} GB of VRAM"
        if entry.base not in UNET_VRAM_GB:
            text += f" ({least_vram_gb(entry):g} GB with fp8 weights)"
    if entry.needs:
        text += "; needs " + _and([needs_label(role, entry.base) for role in entry.needs])
    return text


def settings_line(entry: CatalogEntry) -> str:
    """Its card's settings, A1111's words: "Euler a, 25-28 steps, CFG 4-7, clip skip 2"."""
    s = entry.settings
    parts = [
        str(s["sampler"]) if s.get("sampler") else "",
        f"{s['steps']} steps" if s.get("steps") else "",
        f"CFG {s['cfg']}" if s.get("cfg") else "",
        f"distilled CFG {s['distilled_cfg']}" if s.get("distilled_cfg") else "",
        f"clip skip {s['clip_skip']}" if s.get("clip_skip") else "",
    ]
    return ", ".join(p for p in parts if p)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _year(text: str) -> float | None:
    found = re.fullmatch(r"(\d{4})(?:-(\d{2}))?(?:-\d{2})?", text.strip())
    if not found:
        return None
    month = int(found.group(2) or 6)  # a year alone: its middle
    return int(found.group(1)) + (month - 1) / 12


def latest_year(entry: CatalogEntry) -> float | None:
    """When the line last had a version: its update year, its Civitai publication, its release."""
    dates = [_year(d) for d in (entry.updated, str(entry.popularity.get("published", "")), entry.released) if d]
    known = [d for d in dates if d is not None]
    return max(known) if known else None


def recency(entry: CatalogEntry, newest: float, *, superseded: bool = True) -> float:
    """0 for SD 1.x's first days, 1 for the newest line in the catalog; 0.3 when nothing is known;
    halved for a line its makers superseded (unless `superseded` is False)."""
    year = latest_year(entry)
    value = 0.3 if year is None else min(1.0, max(0.0, (year - EARLIEST) / max(newest - EARLIEST, 0.5)))
    return value * 0.5 if superseded and entry.superseded_by else value


def popularity(entry: CatalogEntry) -> float | None:
    """Civitai downloads on a log scale (a million = 1), when `catalog enrich` fetched them."""
    downloads = entry.popularity.get("downloads")
    if not isinstance(downloads, int) or downloads < 0:
        return None
    return min(1.0, math.log10(downloads + 1) / 6)
