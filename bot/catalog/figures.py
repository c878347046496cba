"""The bundled snapshot of Civitai's public figures for the reference list, with its date.

Offline, the currency prior has only what ships: `bot/catalog/figures.json`, written by
`python tools/snapshot_catalog_figures.py` on a machine with network (one `GET /api/v1/models`
search per reference entry; a figure is kept only when Civitai lists a checkpoint of exactly that
name). A `catalog enrich` lookup of an installed file outranks it. No snapshot shipped, or an entry
missing from it: no figures, never invented ones.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bot.catalog.civitai import CivitaiClient, CivitaiError
from bot.catalog.entries import CatalogEntry
from bot.catalog.sources import spellings

FIGURES_FILE = Path(__file__).with_name("figures.json")
KEPT = ("downloads", "thumbs_up", "published")


@dataclass
class Snapshot:
    as_of: str = ""  # YYYY-MM-DD, the day Civitai was asked
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # reference name -> figures
    missing: list[str] = field(default_factory=list)
    error: str | None = None  # why asking stopped, if it did

    def to_json(self) -> str:
        return json.dumps({"as_of": self.as_of, "figures": self.figures}, indent=1, sort_keys=True) + "\n"


def read_snapshot(path: Path) -> Snapshot:
    """A snapshot file; an absent or unreadable one is an empty snapshot."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Snapshot()
    if not isinstance(data, dict) or not isinstance(data.get("figures"), dict):
        return Snapshot()
    figures = {
        str(name): {k: v for k, v in values.items() if k in KEPT}
        for name, values in data["figures"].items()
        if isinstance(values, dict)
    }
    return Snapshot(str(data.get("as_of") or "")[:10], figures)


@cache
def bundled() -> Snapshot:
    return read_snapshot(FIGURES_FILE)


def figures_for(name: str) -> dict[str, Any]:
    """A reference entry's bundled figures with the snapshot's date ("as_of"), or {}."""
    snapshot = bundled()
    found = snapshot.figures.get(name)
    return {**found, "as_of": snapshot.as_of} if found else {}


async def take_snapshot(client: CivitaiClient, entries: list[CatalogEntry]) -> Snapshot:
    """Ask Civitai for each entry's figures: the checkpoint listed under exactly its name (or an
    alias). The first failure stops it (the snapshot then says why); what was found is kept."""
    snapshot = Snapshot(as_of=time.strftime("%Y-%m-%d", time.gmtime()))
    for entry in entries:
        names = set().union(*(spellings(n) for n in (entry.display_name, *entry.tags)))
        try:
            models = await client.search_models({"types": "Checkpoint", "query": entry.display_name, "limit": "10"})
        except CivitaiError as e:
            snapshot.error = str(e)
            break
        match = next((m for m in models if spellings(m["name"]) & names), None)
        if match is None:
            snapshot.missing.append(entry.name)
            continue
        snapshot.figures[entry.name] = {k: match[k] for k in KEPT if k in match}
    return snapshot


def write_snapshot(snapshot: Snapshot, path: Path) -> None:
    """Replace the file in one step: a reader sees the old snapshot or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(snapshot.to_json())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
