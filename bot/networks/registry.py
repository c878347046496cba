"""The registries of LoRAs and textual-inversion embeddings: files found in their folders, identified by
sha256, picked by name in prompts.

They live where A1111 users keep them: `Lora` (or `LyCORIS`) and `embeddings` folders inside the
models directory, or beside it when the models directory is A1111's `models/Stable-diffusion` (and
A1111's `embeddings` at the WebUI's root). Every file is read through the same safe readers as
checkpoints (the safetensors header reader; the allow-list unpickler for an embedding's .pt) and must
lie inside one of those folders after links are followed. The name a prompt uses is the file stem, as
in A1111 (`<lora:add_detail:0.6>`, `EasyNegative`); kohya's `ss_output_name` is accepted as an alias.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiosqlite

from bot.checkpoints.confinement import inside
from bot.checkpoints.hash_cache import FileStamp, HashCache
from bot.checkpoints.inspection import check_path, group_metadata, is_pickle_file
from bot.checkpoints.safetensors_header import read_header
from bot.checkpoints.sidecars import read_sidecars
from bot.components.detection import TEXT_ENCODER_FOLDERS, VAE_FOLDERS
from bot.config import Settings
from bot.controlnets.detection import CONTROLNET_FOLDERS
from bot.db import transaction
from bot.networks.detection import BASE_LABELS, AdapterKind, detect_adapter, detect_embedding, embedding_label
from bot.untrusted import clean_text, has_lone_surrogate, load_json
from common.detector_file import DETECTOR_FOLDERS
from common.errors import CheckpointFileError, RegistryError
from common.hashing import addnet_hash, hash_file
from common.pickle_reader import read_pickle_checkpoint
from common.upscaler_detection import UPSCALER_FOLDERS

log = logging.getLogger(__name__)

LORA_FOLDERS = ("Lora", "LyCORIS")  # A1111's models/Lora; the LyCORIS extension's models/LyCORIS
EMBEDDING_FOLDERS = ("embeddings",)  # A1111's embeddings; ComfyUI's models/embeddings
MAX_TRIGGER_WORDS = 12
_NAME_BAD = re.compile(r"[<>:]+")  # characters a <lora:NAME:…> tag cannot carry (spaces it can, as in A1111)


@dataclass
class NetworkEntry:
    """A registered LoRA or (kind 'embedding') textual-inversion embedding."""

    id: int
    name: str
    alias: str
    display_name: str
    path: Path
    relative_path: str
    sha256: str
    short_hash: str
    format: str
    kind: str  # lora | locon | loha | lokr | embedding
    layout: str
    base: str
    decided_by: str
    loadable: bool
    reason: str
    rank: int | None  # a LoRA's rank; an embedding's number of vectors
    trigger_words: list[str]
    description: str
    nsfw: bool
    preview_path: str | None
    metadata: dict[str, Any]
    file_size: int
    mtime_ns: int
    status: str
    added_at: float
    updated_at: float

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    @property
    def base_label(self) -> str:
        return BASE_LABELS.get(self.base, self.base)

    @property
    def label(self) -> str:
        if self.kind in ("upscaler", "vae", "text_encoder", "controlnet", "clip_vision", "annotator", "detector"):
            return self.decided_by
        if self.kind == "embedding":
            return embedding_label(self.base, self.rank or 0)
        return AdapterKind(self.kind, self.layout, self.base, self.decided_by, self.loadable, self.reason).label

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("id", "mtime_ns")}
        return out | {"path": str(self.path), "autov2": self.autov2, "label": self.label}


@dataclass
class NetworkScan:
    added: list[NetworkEntry] = field(default_factory=list)
    updated: list[NetworkEntry] = field(default_factory=list)
    missing: list[NetworkEntry] = field(default_factory=list)
    unchanged: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.missing)} missing, "
            f"{self.unchanged} unchanged, {len(self.errors)} skipped"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": [e.name for e in self.added],
            "updated": [e.name for e in self.updated],
            "missing": [e.name for e in self.missing],
            "unchanged": self.unchanged,
            "errors": [{"path": p, "reason": r} for p, r in self.errors],
        }


@dataclass(frozen=True)
class FileKind:
    """What a file is, from its header: the registry's columns that describe it."""

    kind: str
    layout: str
    base: str
    decided_by: str
    loadable: bool
    reason: str
    size: int | None  # rank, vectors, or an upscaler's scale
    metadata: dict[str, str]
    format: str = ""  # safetensors | pickle; unset: from the layout


@dataclass
class Examined:
    found: FileKind
    sha256: str
    short_hash: str
    stamp: FileStamp


def network_folders(models_root: Path, names: tuple[str, ...]) -> list[Path]:
    """The folders of these names that exist: inside the models directory, and for A1111's layout
    (models/Stable-diffusion) beside it (models/Lora) and at the WebUI's root (embeddings)."""
    parents = [models_root]
    if models_root.name.lower() == "stable-diffusion":
        parents += [models_root.parent, models_root.parent.parent]
    wanted = {name.lower() for name in names}
    found: list[Path] = []
    for parent in parents:
        try:
            children = sorted(parent.iterdir())
        except OSError:
            continue
        for child in children:
            if child.name.lower() in wanted and child.is_dir():
                resolved = child.resolve()
                if resolved not in found:
                    found.append(resolved)
    return found


def extra_network_folders(models_root: Path) -> list[Path]:
    """Every LoRA, embeddings, upscaler, VAE, text encoder and ControlNet folder: the checkpoint scan
    leaves them to their registries."""
    return network_folders(
        models_root,
        LORA_FOLDERS + EMBEDDING_FOLDERS + UPSCALER_FOLDERS + VAE_FOLDERS + TEXT_ENCODER_FOLDERS + CONTROLNET_FOLDERS
        + ("clip_vision", "ControlNetPreprocessor") + DETECTOR_FOLDERS,
    )


def examine_lora(path: Path) -> FileKind:
    """The adapter in `path` from its header alone; CheckpointFileError when it is not one we can keep."""
    check_path(path)
    if is_pickle_file(path):
        raise CheckpointFileError(
            f"{path.name}: a pickled LoRA; convert it first with `python bot.py convert {path.name}`"
        )
    try:
        header = read_header(path)
    except CheckpointFileError as e:
        raise CheckpointFileError(f"{path.name}: {e}") from None
    adapter = detect_adapter(header.tensors, header.metadata)
    if adapter is None:
        raise CheckpointFileError(f"{path.name}: not a LoRA (no lora_down/lora_up or lora_A/lora_B tensors)")
    ranks = [t.shape[0] for k, t in header.tensors.items() if k.endswith(("lora_down.weight", "lora_A.weight"))]
    a = adapter
    return FileKind(
        a.kind, a.layout, a.base, a.decided_by, a.loadable, a.reason, max(ranks) if ranks else None, header.metadata
    )


def read_tensor_map(path: Path) -> tuple[dict[str, Any], dict[str, str], bool]:
    """(tensor descriptors by name, metadata, pickled?) of a file beside checkpoints: a safetensors
    header, or a .pt/.pth/.bin through the allow-list unpickler; the file's name leads any refusal."""
    check_path(path)
    pickled = is_pickle_file(path)
    try:
        if pickled:
            return dict(read_pickle_checkpoint(path).tensors), {}, True
        header = read_header(path)
        return dict(header.tensors), header.metadata, False
    except CheckpointFileError as e:
        raise CheckpointFileError(f"{path.name}: {e}") from None


def examine_embedding(path: Path) -> FileKind:
    """The embedding in `path` (.safetensors header, or a .pt/.bin through the allow-list unpickler)."""
    tensors, metadata, _ = read_tensor_map(path)
    found = detect_embedding(tensors, metadata)
    if found is None:
        raise CheckpointFileError(f"{path.name}: not a textual-inversion embedding")
    f = found
    return FileKind("embedding", f.layout, f.base, f.decided_by, f.loadable, f.reason, f.vectors, metadata)


def trigger_words(metadata: dict[str, str], sidecar_words: list[str], activation_text: str = "") -> list[str]:
    """Words that wake the LoRA: what the user or Civitai says first, then modelspec, then kohya's
    most frequent training tags (`ss_tag_frequency`)."""
    words: list[str] = []
    if activation_text.strip():
        words += [w.strip() for w in activation_text.split(",")]
    words += sidecar_words
    phrase = metadata.get("modelspec.trigger_phrase", "")
    if phrase:
        words += [w.strip() for w in phrase.split(",")]
    raw = metadata.get("ss_tag_frequency")
    if raw and len(words) < MAX_TRIGGER_WORDS:
        try:
            frequencies = load_json(raw)
        except ValueError:
            frequencies = {}
        counts: dict[str, int] = {}
        for tags in frequencies.values() if isinstance(frequencies, dict) else ():
            for tag, count in tags.items() if isinstance(tags, dict) else ():
                if isinstance(count, int) and not isinstance(count, bool):
                    counts[tag.strip()] = counts.get(tag.strip(), 0) + count
        words += sorted(counts, key=lambda t: -counts[t])[:5]
    kept: list[str] = []
    for word in words:
        word = clean_text(word)[:80]
        if word and word.lower() not in (k.lower() for k in kept):
            kept.append(word)
    return kept[:MAX_TRIGGER_WORDS]


class NetworkRegistry:
    """One kind of extra network in its folders; LoraRegistry and EmbeddingRegistry say which."""

    noun: ClassVar[str]
    family: ClassVar[str]
    table: ClassVar[str]
    folder_names: ClassVar[tuple[str, ...]]
    suffixes: ClassVar[tuple[str, ...]]
    list_command: ClassVar[str]

    def __init__(self, db: aiosqlite.Connection, models_root: Path, folders: list[Path] | None = None) -> None:
        self._db = db
        self.models_root = models_root.resolve()
        self._folders = folders
        self._hashes = HashCache(db)

    @property
    def folders(self) -> list[Path]:
        return self._folders if self._folders is not None else network_folders(self.models_root, self.folder_names)

    def default_folder(self) -> Path:
        """Where a new file of this kind goes (downloads): its first folder, else models/<Folder>."""
        existing = self.folders
        return existing[0] if existing else self.models_root / self.folder_names[0]

    def examine_file(self, path: Path) -> FileKind:
        raise NotImplementedError

    def short_hash(self, path: Path, sha256: str) -> str:
        raise NotImplementedError

    def alias(self, path: Path, found: FileKind) -> str:
        """A second name the file answers to: kohya's `ss_output_name` for a LoRA."""
        return found.metadata.get("ss_output_name", "")

    # --- queries ---------------------------------------------------------------------------------

    async def list(self, status: str | None = None, base: str | None = None) -> list[NetworkEntry]:
        clauses, params = [], []
        if status:
            clauses.append("status = ?")
            params.append(status)
        if base:
            clauses.append("base = ?")
            params.append(base)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM {self.table}{where} ORDER BY name COLLATE NOCASE"
        async with self._db.execute(sql, params) as cur:
            return [_entry(row) for row in await cur.fetchall()]

    async def find(self, ref: str) -> NetworkEntry | None:
        """By name (exact first, then any case), alias, or hash (AutoV2, A1111 short hash, sha256)."""
        ref = ref.strip()
        prefix = ref.lower() if re.fullmatch(r"[0-9a-fA-F]{10,64}", ref) else None
        async with self._db.execute(
            f"SELECT * FROM {self.table} WHERE name = ? COLLATE BINARY OR name = ? OR (alias != '' AND alias = ? COLLATE NOCASE) "
            "OR (? IS NOT NULL AND (substr(sha256, 1, length(?)) = ? OR short_hash = ?)) "
            "ORDER BY name = ? COLLATE BINARY DESC, name = ? DESC, id LIMIT 1",
            (ref, ref, ref, prefix, prefix, prefix, prefix, ref, ref),
        ) as cur:
            row = await cur.fetchone()
        return _entry(row) if row else None

    async def get(self, ref: str) -> NetworkEntry:
        entry = await self.find(ref)
        if entry is None:
            raise RegistryError(f"no {self.noun} named {ref!r}; `{self.list_command}` shows what is installed")
        return entry

    # --- changes ---------------------------------------------------------------------------------

    def holds(self, path: Path) -> bool:
        """Whether `path` is a file in one of this kind's folders (whatever its suffix)."""
        return self._locate(path) is not None

    def resolve_inside(self, path: Path) -> tuple[Path, Path]:
        """The file's resolved path and the folder holding it; anything else is refused."""
        located = self._locate(path)
        if located is None:
            names = ", ".join(str(f) for f in self.folders) or str(self.models_root / self.folder_names[0])
            raise RegistryError(
                f"{self.noun} {path} is not a file in the {self.noun} folders ({names}); move it there first"
            )
        if located[0].suffix.lower() not in self.suffixes:
            raise RegistryError(f"{path}: a {self.noun} file ends in {' or '.join(self.suffixes)}")
        return located

    def _locate(self, path: Path) -> tuple[Path, Path] | None:
        candidates = [path.expanduser()]
        if not path.is_absolute():  # as typed: from here, from the models folder, or from a LoRA folder
            candidates += [self.models_root / path, *(folder / path for folder in self.folders)]
        for candidate in candidates:
            for folder in self.folders:
                resolved = inside(candidate, folder)
                if resolved is not None:
                    return resolved, folder
        return None

    async def add(
        self, path: Path, *, name: str | None = None, description: str | None = None, nsfw: bool | None = None
    ) -> NetworkEntry:
        if any(isinstance(t, str) and has_lone_surrogate(t) for t in (name, description)):
            raise RegistryError("the text holds characters that are not valid text (a lone surrogate); retype it")
        resolved, folder = self.resolve_inside(path)
        relative = resolved.relative_to(folder).as_posix()
        if await self._one(f"SELECT * FROM {self.table} WHERE path = ?", str(resolved)) is not None:
            raise RegistryError(f"{relative} is already registered as a {self.noun}")
        examined = await self._examine(resolved)
        twin = await self._one(f"SELECT * FROM {self.table} WHERE sha256 = ?", examined.sha256)
        if twin is not None:
            raise RegistryError(
                f"{relative} has the same content as the {self.noun} {twin.name!r}; not registered twice"
            )
        sidecars = await asyncio.to_thread(read_sidecars, resolved, folder)
        base_name = _NAME_BAD.sub("_", (name or resolved.with_suffix("").name).strip()).strip("_")
        if not base_name:
            raise RegistryError("the name must contain at least one letter or digit")
        if name is not None and await self.find(base_name) is not None:
            raise RegistryError(f"the {self.noun} name {base_name!r} is already taken; choose another")
        unique = base_name if name is not None else await self._free_name(base_name)
        activation = str((sidecars.user_metadata or {}).get("activation text", ""))
        civitai_words = list((sidecars.civitai or {}).get("trained_words", []))
        now = time.time()
        columns = {
            "name": unique,
            "alias": clean_text(self.alias(resolved, examined.found))[:100],
            "display_name": clean_text(
                name or examined.found.metadata.get("modelspec.title", "") or resolved.with_suffix("").name
            )[:100],
            "path": str(resolved),
            "relative_path": relative,
            "description": description if description is not None else sidecars.description,
            "nsfw": int(nsfw if nsfw is not None else sidecars.nsfw),
            "trigger_words_json": json.dumps(trigger_words(examined.found.metadata, civitai_words, activation)),
            "status": "present",
            "added_at": now,
            **self._columns(examined, sidecars.preview),
        }
        try:
            async with transaction(self._db) as db:
                await db.execute(
                    f"INSERT INTO {self.table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                    tuple(columns.values()),
                )
        except sqlite3.IntegrityError as e:
            raise RegistryError(f"{relative} could not be registered: {e}") from None
        entry = await self.get(unique)
        log.info("%s registered: %s (%s, %s)", self.noun, entry.name, entry.short_hash, entry.label)
        return entry

    async def remove(self, ref: str) -> NetworkEntry:
        """Forget a file; it stays where it is."""
        entry = await self.get(ref)
        async with transaction(self._db) as db:
            await db.execute(f"DELETE FROM {self.table} WHERE id = ?", (entry.id,))
        log.info("%s removed from the registry: %s", self.noun, entry.name)
        return entry

    async def scan(self) -> NetworkScan:
        """Register new files in the folders, refresh changed ones, mark vanished ones missing."""
        report = NetworkScan()
        found, escaped = await asyncio.to_thread(_walk, self.folders, self.suffixes)
        report.errors.extend((rel, f"links outside the {self.noun} folder; not registered") for rel in escaped)
        known = {e.path: e for e in await self.list()}
        for path in found:
            entry = known.pop(path, None)
            try:
                if entry is None:
                    report.added.append(await self.add(path))
                    continue
                stamp = await asyncio.to_thread(FileStamp.of, path)
                if (stamp.size, stamp.mtime_ns) != (entry.file_size, entry.mtime_ns) or entry.status == "missing":
                    report.updated.append(await self._refresh(entry, path))
                else:
                    report.unchanged += 1
            except (CheckpointFileError, RegistryError) as e:
                report.errors.append((path.name, str(e)))
            except OSError as e:
                report.errors.append((path.name, f"cannot read: {e.strerror or e}"))
        for entry in known.values():
            if entry.status != "missing":
                await self._update(entry.id, {"status": "missing", "updated_at": time.time()})
                report.missing.append(await self.get(entry.name))
        log.info(
            "%s scan: %d added, %d updated, %d missing, %d errors",
            self.noun,
            len(report.added),
            len(report.updated),
            len(report.missing),
            len(report.errors),
        )
        return report

    async def apply_civitai(self, found: dict[str, dict[str, Any]]) -> int:
        """What Civitai says of files found there by hash (bot/catalog/civitai.py `parse_version`):
        its trained words after the ones already known, its tags, and a description where there was
        none. Returns how many entries changed."""
        changed = 0
        for entry in await self.list():
            info = found.get(entry.sha256)
            if not info:
                continue
            words = trigger_words({}, [*entry.trigger_words, *info.get("trained_words", [])])
            civitai = {
                "model_name": clean_text(str(info.get("model_name", "")))[:200],
                "base_model": clean_text(str(info.get("base_model", "")))[:50],
                "tags": [clean_text(t)[:50] for t in info.get("tags", [])][:20],
            }
            columns: dict[str, object] = {}
            if words != entry.trigger_words:
                columns["trigger_words_json"] = json.dumps(words)
            if entry.metadata.get("civitai") != civitai:
                columns["metadata_json"] = json.dumps(entry.metadata | {"civitai": civitai})
            if not entry.description and info.get("description"):
                columns["description"] = clean_text(str(info["description"]))[:2000]
            if columns:
                await self._update(entry.id, columns | {"updated_at": time.time()})
                changed += 1
        return changed

    # --- helpers ---------------------------------------------------------------------------------

    async def _examine(self, path: Path) -> Examined:
        found = await asyncio.to_thread(self.examine_file, path)
        stamp = await asyncio.to_thread(FileStamp.of, path)
        cached = await self._hashes.get(stamp)
        hashes = cached or await asyncio.to_thread(hash_file, path)
        if cached is None and await asyncio.to_thread(FileStamp.of, path) == stamp:
            await self._hashes.put(stamp, hashes)
        short = await asyncio.to_thread(self.short_hash, path, hashes.sha256)
        return Examined(found, hashes.sha256, short, stamp)

    def _columns(self, examined: Examined, preview: Path | None) -> dict[str, object]:
        found = examined.found
        return {
            "sha256": examined.sha256,
            "short_hash": examined.short_hash,
            "format": found.format or ("safetensors" if found.layout not in ("a1111", "diffusers") else "pickle"),
            "kind": found.kind,
            "layout": found.layout,
            "base": found.base,
            "decided_by": found.decided_by,
            "loadable": int(found.loadable),
            "reason": found.reason,
            "rank": found.size,
            "metadata_json": json.dumps(group_metadata(found.metadata)),
            "preview_path": str(preview) if preview else None,
            "file_size": examined.stamp.size,
            "mtime_ns": examined.stamp.mtime_ns,
            "updated_at": time.time(),
        }

    async def _refresh(self, entry: NetworkEntry, path: Path) -> NetworkEntry:
        examined = await self._examine(path)
        twin = await self._one(f"SELECT * FROM {self.table} WHERE sha256 = ?", examined.sha256)
        if twin is not None and twin.id != entry.id:
            raise RegistryError(f"now has the same content as the {self.noun} {twin.name!r}; left as it was")
        sidecars = await asyncio.to_thread(read_sidecars, path, path.parent)
        await self._update(entry.id, {**self._columns(examined, sidecars.preview), "status": "present"})
        log.info("%s %s changed on disk: now %s", self.noun, entry.name, examined.short_hash)
        return await self.get(entry.name)

    async def _update(self, lora_id: int, columns: dict[str, object]) -> None:
        async with transaction(self._db) as db:
            await db.execute(
                f"UPDATE {self.table} SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
                (*columns.values(), lora_id),
            )

    async def _one(self, sql: str, *params: object) -> NetworkEntry | None:
        async with self._db.execute(sql, params) as cur:
            row = await cur.fetchone()
        return _entry(row) if row else None

    async def _free_name(self, base: str) -> str:
        name, n = base, 1
        while await self._one(f"SELECT * FROM {self.table} WHERE name = ?", name) is not None:
            n += 1
            name = f"{base}-{n}"
        return name


def _entry(row: sqlite3.Row) -> NetworkEntry:
    return NetworkEntry(
        id=row["id"],
        name=row["name"],
        alias=row["alias"],
        display_name=row["display_name"],
        path=Path(row["path"]),
        relative_path=row["relative_path"],
        sha256=row["sha256"],
        short_hash=row["short_hash"],
        format=row["format"],
        kind=row["kind"],
        layout=row["layout"],
        base=row["base"],
        decided_by=row["decided_by"],
        loadable=bool(row["loadable"]),
        reason=row["reason"],
        rank=row["rank"],
        trigger_words=json.loads(row["trigger_words_json"]),
        description=row["description"],
        nsfw=bool(row["nsfw"]),
        preview_path=row["preview_path"],
        metadata=json.loads(row["metadata_json"]),
        file_size=row["file_size"],
        mtime_ns=row["mtime_ns"],
        status=row["status"],
        added_at=row["added_at"],
        updated_at=row["updated_at"],
    )


def _walk(folders: list[Path], suffixes: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """Files with these suffixes in the folders (resolved), and the names of links leading outside them."""
    found: list[Path] = []
    escaped: list[str] = []
    for root in folders:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file in sorted(files):
                path = Path(folder) / file
                if path.suffix.lower() not in suffixes or file.startswith("."):
                    continue
                resolved = path.resolve()
                if not resolved.is_relative_to(root):
                    escaped.append(path.relative_to(root).as_posix())
                elif resolved.is_file() and resolved not in found:
                    found.append(resolved)
    return found, escaped


class LoraRegistry(NetworkRegistry):
    noun = "LoRA"
    family = "lora"  # what checkpoint inspection calls such a file
    table = "loras"
    folder_names = LORA_FOLDERS
    suffixes = (".safetensors",)
    list_command = "loras list"

    def examine_file(self, path: Path) -> FileKind:
        return examine_lora(path)

    def short_hash(self, path: Path, sha256: str) -> str:
        return addnet_hash(path)[:12]  # A1111's LoRA hash: the tensors only


class EmbeddingRegistry(NetworkRegistry):
    noun = "embedding"
    family = "embedding"
    table = "embeddings"
    folder_names = EMBEDDING_FOLDERS
    suffixes = (".safetensors", ".pt", ".bin")
    list_command = "embeddings list"

    def examine_file(self, path: Path) -> FileKind:
        return examine_embedding(path)

    def short_hash(self, path: Path, sha256: str) -> str:
        return sha256[:12]  # A1111 textual_inversion.py: the whole file's sha256


def network_registries(db: aiosqlite.Connection, settings: Settings) -> tuple[LoraRegistry, EmbeddingRegistry]:
    """The extra networks' registries, in the folders the settings name (or the usual ones): what
    `scan`, the jobs, and the commands that take any model file go through."""
    root = settings.models_dir.expanduser().resolve()
    return (
        LoraRegistry(db, root, settings.lora_dirs or None),
        EmbeddingRegistry(db, root, settings.embedding_dirs or None),
    )
