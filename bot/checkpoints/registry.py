"""The checkpoint registry: register, list, show, remove and scan checkpoints in the models directory.

Files are identified by the sha256 of their content; every registered file lies inside the models
directory after resolving symlinks and `..`. Slow work (header parsing, hashing) runs in a thread
so the bot's event loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import aiosqlite

from bot.catalog.taxonomy import FACET_KEYS, check_facets
from bot.checkpoints.confinement import resolve_inside
from bot.checkpoints.hash_cache import FileStamp, HashCache
from bot.checkpoints.inspection import CHECKPOINT_SUFFIXES, Inspection, inspect_file
from bot.checkpoints.sidecars import Sidecars, read_sidecars
from bot.db import transaction
from bot.networks.registry import extra_network_folders
from bot.untrusted import has_lone_surrogate
from common.errors import CheckpointFileError, RegistryError
from common.hashing import FileHashes, hash_file

log = logging.getLogger(__name__)

# Progress for long hashes: called with (file name, bytes done, bytes total) from a worker thread.
HashProgress = Callable[[str, int, int], None]

_SLUG_BAD = re.compile(r"[^a-z0-9._-]+")


def slugify(text: str) -> str:
    slug = _SLUG_BAD.sub("-", text.lower()).strip("-._")
    return slug[:64].rstrip("-._") or "checkpoint"


@dataclass
class CheckpointEntry:
    id: int
    name: str
    display_name: str
    path: Path
    relative_path: str
    sha256: str
    autov1: str | None
    format: str
    family: str
    variant: str
    prediction: str
    architecture: str
    runnable: bool
    pipeline_config: str | None
    file_size: int
    mtime_ns: int
    description: str
    nsfw: bool
    status: str
    sidecars: dict[str, Any]
    preview_path: str | None
    inspection: dict[str, Any]
    added_at: float
    updated_at: float
    training: str = ""  # base | fine-tuned | merged | "" (unknown)
    lineage: list[dict[str, str]] = field(default_factory=list)  # merge parents, primary first
    tags: list[str] = field(default_factory=list)
    facets: dict[str, Any] = field(default_factory=dict)  # owner-set catalog facets (bot/catalog/sources.py)
    vae_sha256: str | None = None  # its default VAE (A1111's "SD VAE" per checkpoint); None: its own

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("id", "mtime_ns")}
        return out | {"path": str(self.path), "autov2": self.autov2}


# Columns copied as they are into CheckpointEntry; the rest need converting.
_PLAIN_COLUMNS = [
    f.name
    for f in fields(CheckpointEntry)
    if f.name not in ("path", "runnable", "nsfw", "sidecars", "inspection", "tags", "lineage", "facets")
]


@dataclass
class Examined:
    inspection: Inspection
    sidecars: Sidecars
    hashes: FileHashes
    stamp: FileStamp

    def columns(self, models_root: Path) -> dict[str, object]:
        """The checkpoints-table columns that come from the file, for INSERT and UPDATE alike."""
        arch = self.inspection.architecture
        lineage = merge_lineage(self.inspection.metadata)
        return {
            "training": "merged" if lineage else "",
            "lineage_json": json.dumps(lineage),
            "sha256": self.hashes.sha256,
            "autov1": self.hashes.autov1,
            "format": self.inspection.format,
            "family": arch.family,
            "variant": arch.variant,
            "prediction": arch.prediction,
            "architecture": arch.label,
            "runnable": int(arch.runnable),
            "pipeline_config": self.inspection.pipeline_config,
            "file_size": self.stamp.size,
            "mtime_ns": self.stamp.mtime_ns,
            "inspection_json": json.dumps(self.inspection.to_dict()),
            "sidecars_json": json.dumps(self.sidecars.to_dict(models_root)),
            "preview_path": str(self.sidecars.preview) if self.sidecars.preview else None,
            "updated_at": time.time(),
        }


@dataclass
class ScanReport:
    added: list[CheckpointEntry] = field(default_factory=list)
    updated: list[CheckpointEntry] = field(default_factory=list)
    restored: list[CheckpointEntry] = field(default_factory=list)
    missing: list[CheckpointEntry] = field(default_factory=list)
    unchanged: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": [e.name for e in self.added],
            "updated": [e.name for e in self.updated],
            "restored": [e.name for e in self.restored],
            "missing": [e.name for e in self.missing],
            "unchanged": self.unchanged,
            "errors": [{"path": p, "reason": r} for p, r in self.errors],
        }


class CheckpointRegistry:
    def __init__(self, db: aiosqlite.Connection, models_root: Path) -> None:
        self._db = db
        self.models_root = models_root.resolve()
        self._hashes = HashCache(db)

    @property
    def db(self) -> aiosqlite.Connection:
        return self._db

    # --- inspection and hashing, off the event loop -------------------------------------------

    async def hashes(self, path: Path, progress: HashProgress | None = None) -> FileHashes:
        stamp = FileStamp.of(path)
        cached = await self._hashes.get(stamp)
        if cached is not None:
            return cached
        callback = None
        if progress is not None:
            done = 0

            def callback(n: int) -> None:
                nonlocal done
                done += n
                progress(path.name, done, stamp.size)

        hashes = await asyncio.to_thread(hash_file, path, callback)
        if FileStamp.of(path) == stamp:  # a file rewritten while we read it must not be cached
            await self._hashes.put(stamp, hashes)
        return hashes

    # --- queries -------------------------------------------------------------------------------

    async def list(self, status: str | None = None) -> list[CheckpointEntry]:
        sql = "SELECT * FROM checkpoints" + (" WHERE status = ?" if status else "") + " ORDER BY name"
        async with self._db.execute(sql, (status,) if status else ()) as cur:
            rows = await cur.fetchall()
        return [await self._entry(row) for row in rows]

    async def find(self, ref: str) -> CheckpointEntry | None:
        """By slug name, display name, or hash (AutoV2 / full sha256, any case)."""
        ref = ref.strip()
        # A hash prefix is matched only when it is one: hex digits, so no LIKE wildcard (% or _) gets in.
        prefix = ref.lower() if re.fullmatch(r"[0-9a-fA-F]{10,64}", ref) else None
        async with self._db.execute(
            "SELECT * FROM checkpoints WHERE (? != '' AND name = ?) OR display_name = ? OR sha256 = lower(?) "
            "OR (? IS NOT NULL AND substr(sha256, 1, length(?)) = ?) ORDER BY name = ? DESC LIMIT 1",
            (slugify(ref), slugify(ref), ref, ref, prefix, prefix, prefix, slugify(ref)),
        ) as cur:
            row = await cur.fetchone()
        return await self._entry(row) if row else None

    async def get(self, ref: str) -> CheckpointEntry:
        entry = await self.find(ref)
        if entry is None:
            raise RegistryError(f"no checkpoint named {ref!r}; `checkpoints list` shows what is registered")
        return entry

    async def _entry(self, row: sqlite3.Row) -> CheckpointEntry:
        async with self._db.execute(
            "SELECT tag FROM checkpoint_tags WHERE checkpoint_id = ? ORDER BY tag", (row["id"],)
        ) as cur:
            tags = [r[0] for r in await cur.fetchall()]
        plain = {name: row[name] for name in _PLAIN_COLUMNS}
        return CheckpointEntry(
            **plain,
            path=Path(row["path"]),
            runnable=bool(row["runnable"]),
            nsfw=bool(row["nsfw"]),
            sidecars=json.loads(row["sidecars_json"]),
            inspection=json.loads(row["inspection_json"]),
            lineage=json.loads(row["lineage_json"]),
            tags=tags,
            facets=json.loads(row["facets_json"]),
        )

    # --- changes -------------------------------------------------------------------------------

    def resolve_inside(self, path: Path) -> Path:
        """The file's resolved path, refusing anything that lies (or links) outside the models directory."""
        resolved = resolve_inside(path, self.models_root, what="checkpoint")
        if resolved.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise RegistryError(f"{path}: not a checkpoint file (expected .safetensors, .ckpt or .pt)")
        return resolved

    async def add(
        self,
        path: Path,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: list[str] | None = None,
        nsfw: bool | None = None,
        progress: HashProgress | None = None,
    ) -> CheckpointEntry:
        _check_text(name, description, *(tags or []))
        resolved = self.resolve_inside(path)
        relative = resolved.relative_to(self.models_root).as_posix()
        existing = await self._by_path(resolved)
        if existing is not None:
            raise RegistryError(f"{relative} is already registered as {existing.name!r}")
        if name is not None and not slugify(name):
            raise RegistryError("the name must contain at least one letter or digit")
        if name is not None and await self._name_taken(slugify(name)):
            raise RegistryError(f"the name {slugify(name)!r} is already taken; choose another with --name")

        examined = await self._examine(resolved, progress)
        family = examined.inspection.architecture.family
        if family in ("lora", "embedding", "upscaler", "controlnet"):
            noun, folder = {
                "lora": ("a LoRA", "models/Lora"),
                "embedding": ("an embedding", "models/embeddings"),
                "upscaler": ("an upscaler model", "models/ESRGAN"),
                "controlnet": ("a ControlNet", "models/ControlNet"),
            }[family]
            raise RegistryError(f"{relative} is {noun}, not a checkpoint; put it in the {folder} folder")
        twin = await self.find_by_sha256(examined.hashes.sha256)
        if twin is not None:
            raise RegistryError(
                f"{relative} has the same content (sha256 {examined.hashes.autov2}) as {twin.name!r} "
                f"({twin.relative_path}); not registered twice"
            )
        sidecars = examined.sidecars
        for warning in sidecars.warnings:
            log.warning("sidecar skipped: %s", warning)

        display = name or _title(examined.inspection, resolved)
        slug = slugify(name) if name else await self._free_slug(slugify(resolved.with_suffix("").name))
        now = time.time()
        columns = {
            "name": slug,
            "display_name": display,
            "path": str(resolved),
            "relative_path": relative,
            "description": description if description is not None else sidecars.description,
            "nsfw": int(nsfw if nsfw is not None else sidecars.nsfw),
            "status": "present",
            "added_at": now,
            **examined.columns(self.models_root),
        }
        try:
            async with transaction(self._db) as db:
                cur = await db.execute(
                    f"INSERT INTO checkpoints ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                    tuple(columns.values()),
                )
                await self._set_tags(cur.lastrowid, tags if tags is not None else sidecars.tags)
        except sqlite3.IntegrityError as e:  # a concurrent add won the race
            raise RegistryError(f"{relative} could not be registered: {e}") from None
        entry = await self.get(slug)
        log.info("checkpoint registered: %s (%s, %s)", entry.name, entry.autov2, entry.architecture)
        return entry

    async def edit(
        self,
        ref: str,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: list[str] | None = None,
        nsfw: bool | None = None,
        facets: dict[str, Any] | None = None,
        vae_sha256: str | None = None,
    ) -> CheckpointEntry:
        """Change what people see of a checkpoint; the file and its identity stay as they are.
        `vae_sha256` sets its default VAE ("" clears it: its own VAE again).

        `facets` (styles, realism, specialities, training, trigger_words) are merged into what an
        owner set before; an empty value clears that facet, so the next source's value shows again.
        """
        entry = await self.get(ref)
        _check_text(name, description, *(tags or []), *_facet_texts(facets))
        changes: dict[str, object] = {}
        if facets is not None:
            try:
                check_facets(facets, where=entry.name)
            except ValueError as e:
                raise RegistryError(str(e)) from None
            unknown = set(facets) - set(FACET_KEYS)
            if unknown:
                raise RegistryError(f"unknown facet {sorted(unknown)[0]!r}; facets are {', '.join(FACET_KEYS)}")
            merged = {k: v for k, v in (entry.facets | facets).items() if v}
            changes["facets_json"] = json.dumps(merged, sort_keys=True)
        if name is not None:
            slug = slugify(name)
            if slug != entry.name and await self._name_taken(slug):
                raise RegistryError(f"the name {slug!r} is already taken")
            changes |= {"name": slug, "display_name": name.strip()}
        if description is not None:
            changes["description"] = description.strip()
        if nsfw is not None:
            changes["nsfw"] = int(nsfw)
        if vae_sha256 is not None:
            changes["vae_sha256"] = vae_sha256 or None
        if not changes and tags is None:
            raise RegistryError("nothing to change: give a new name, description, tags, facets, VAE or NSFW flag")
        changes["updated_at"] = time.time()
        async with transaction(self._db) as db:
            await db.execute(
                f"UPDATE checkpoints SET {', '.join(f'{c} = ?' for c in changes)} WHERE id = ?",
                (*changes.values(), entry.id),
            )
            if tags is not None:
                await self._set_tags(entry.id, tags)
        edited = await self.get(str(changes.get("name", entry.name)))
        log.info("checkpoint %s edited: %s", edited.name, ", ".join(k for k in changes if k != "updated_at") or "tags")
        return edited

    async def remove(self, ref: str) -> CheckpointEntry:
        """Forget a checkpoint; the file itself stays where it is."""
        entry = await self.get(ref)
        async with transaction(self._db) as db:
            await db.execute("DELETE FROM checkpoints WHERE id = ?", (entry.id,))
        log.info("checkpoint removed from the registry: %s", entry.name)
        return entry

    async def scan(self, progress: HashProgress | None = None) -> ScanReport:
        """Register new files under the models directory, refresh changed ones, mark vanished ones missing."""
        report = ScanReport()
        found, escaped = await asyncio.to_thread(_walk_checkpoints, self.models_root)
        report.errors.extend((rel, "links outside the models directory; not registered") for rel in escaped)
        known = {str(e.path): e for e in await self.list()}
        for path in found:
            entry = known.pop(str(path), None)
            relative = path.relative_to(self.models_root).as_posix()
            try:
                if entry is None:
                    report.added.append(await self.add(path, progress=progress))
                    continue
                stamp = await asyncio.to_thread(FileStamp.of, path)
                if (stamp.size, stamp.mtime_ns) != (entry.file_size, entry.mtime_ns):
                    report.updated.append(await self._refresh(entry, path, progress))
                elif entry.status == "missing":
                    report.restored.append(await self._set_status(entry, "present"))
                else:
                    report.unchanged += 1
            except (CheckpointFileError, RegistryError) as e:
                report.errors.append((relative, str(e)))
            except OSError as e:
                report.errors.append((relative, f"cannot read: {e.strerror or e}"))
            except Exception as e:  # one odd file must not leave every later file unregistered
                log.exception("scan: unexpected error on %s", relative)
                report.errors.append((relative, f"unexpected error ({type(e).__name__}); the log has the details"))
        for entry in known.values():
            if entry.status != "missing":
                report.missing.append(await self._set_status(entry, "missing"))
        log.info(
            "scan: %d added, %d updated, %d restored, %d missing, %d errors",
            len(report.added),
            len(report.updated),
            len(report.restored),
            len(report.missing),
            len(report.errors),
        )
        return report

    # --- helpers -------------------------------------------------------------------------------

    async def _examine(self, path: Path, progress: HashProgress | None) -> Examined:
        """Everything the file itself says: sidecars, inspection, hashes, size and mtime (off the loop)."""
        sidecars = await asyncio.to_thread(read_sidecars, path, self.models_root)
        inspection = await asyncio.to_thread(inspect_file, path, sidecars.yaml_config)
        hashes = await self.hashes(path, progress)
        inspection.hashes = hashes
        return Examined(inspection, sidecars, hashes, await asyncio.to_thread(FileStamp.of, path))

    async def find_by_sha256(self, sha256: str) -> CheckpointEntry | None:
        async with self._db.execute("SELECT * FROM checkpoints WHERE sha256 = ?", (sha256,)) as cur:
            row = await cur.fetchone()
        return await self._entry(row) if row else None

    async def _by_path(self, resolved: Path) -> CheckpointEntry | None:
        async with self._db.execute("SELECT * FROM checkpoints WHERE path = ?", (str(resolved),)) as cur:
            row = await cur.fetchone()
        return await self._entry(row) if row else None

    async def _name_taken(self, slug: str) -> bool:
        async with self._db.execute("SELECT 1 FROM checkpoints WHERE name = ?", (slug,)) as cur:
            return await cur.fetchone() is not None

    async def _free_slug(self, base: str) -> str:
        slug, n = base, 1
        while await self._name_taken(slug):
            n += 1
            slug = f"{base}-{n}"
        return slug

    async def _set_tags(self, checkpoint_id: int, tags: list[str]) -> None:
        clean = sorted({t.strip().lower() for t in tags if t.strip()})
        await self._db.execute("DELETE FROM checkpoint_tags WHERE checkpoint_id = ?", (checkpoint_id,))
        await self._db.executemany(
            "INSERT INTO checkpoint_tags (checkpoint_id, tag) VALUES (?, ?)", [(checkpoint_id, t) for t in clean]
        )

    async def _set_status(self, entry: CheckpointEntry, status: str) -> CheckpointEntry:
        async with transaction(self._db) as db:
            await db.execute(
                "UPDATE checkpoints SET status = ?, updated_at = ? WHERE id = ?", (status, time.time(), entry.id)
            )
        log.info("checkpoint %s is now %s", entry.name, status)
        return await self.get(entry.name)

    async def _refresh(self, entry: CheckpointEntry, path: Path, progress: HashProgress | None) -> CheckpointEntry:
        """The file at a registered path changed: re-inspect and re-hash it, keeping name, tags and notes."""
        examined = await self._examine(path, progress)
        twin = await self.find_by_sha256(examined.hashes.sha256)
        if twin is not None and twin.id != entry.id:
            raise RegistryError(f"now has the same content as {twin.name!r}; left as it was")
        columns = {**examined.columns(self.models_root), "status": "present"}
        async with transaction(self._db) as db:
            await db.execute(
                f"UPDATE checkpoints SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
                (*columns.values(), entry.id),
            )
        log.info("checkpoint %s changed on disk: now %s", entry.name, examined.hashes.autov2)
        return await self.get(entry.name)


def _check_text(*texts: str | None) -> None:
    """Text typed by a person is stored as is; a lone surrogate could be neither stored nor shown."""
    if any(isinstance(t, str) and has_lone_surrogate(t) for t in texts):
        raise RegistryError("the text holds characters that are not valid text (a lone surrogate); retype it")


def _facet_texts(facets: dict[str, Any] | None) -> list[str]:
    values = (facets or {}).values()
    return [v for value in values for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]


def merge_lineage(metadata: dict[str, Any]) -> list[dict[str, str]]:
    """Parents named by an A1111-style merge recipe (ours or A1111's), primary first."""
    merge = metadata.get("merge", {})
    recipe, models = merge.get("recipe"), merge.get("models")
    if not isinstance(recipe, dict):
        return []
    models = models if isinstance(models, dict) else {}
    parents = []
    for role in ("primary", "secondary", "tertiary"):
        sha = recipe.get(f"{role}_model_hash")
        if isinstance(sha, str) and sha:
            info = models.get(sha)
            name = info.get("name", "") if isinstance(info, dict) else ""
            # Whatever a file's metadata says is untrusted: only short strings are kept.
            name = name[:200] if isinstance(name, str) else ""
            parents.append({"role": role, "sha256": sha[:64], "autov2": sha[:10], "name": name})
    return parents


def _title(inspection: Inspection, path: Path) -> str:
    title = inspection.metadata.get("modelspec", {}).get("title", "")
    return title.strip() or path.with_suffix("").name


def _walk_checkpoints(root: Path) -> tuple[list[Path], list[str]]:
    """Checkpoint files under root (resolved), and the relative paths of links that lead outside it.

    Hidden folders, the LoRA and embeddings folders (bot/networks/registry.py scans those) and A1111's VAE files
    (NAME.vae.pt) are skipped.
    """
    found: list[Path] = []
    escaped: list[str] = []
    adapters = set(extra_network_folders(root))
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(folder) / d).resolve() not in adapters)
        for file in sorted(files):
            path = Path(folder) / file
            if path.suffix.lower() in CHECKPOINT_SUFFIXES and ".vae." not in file.lower() and not file.startswith("."):
                resolved = path.resolve()
                if not resolved.is_relative_to(root):
                    escaped.append(path.relative_to(root).as_posix())
                elif resolved.is_file():
                    found.append(resolved)
    return found, escaped
