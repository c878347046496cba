"""The model files a remote worker holds, by sha256: its own models folder, under any names.

A batch from the bot names files by the bot's paths; a remote worker never opens those. It looks
each file up here by its sha256 (checkpoint, its components, LoRAs, embeddings, VAE, upscaler) and
runs its own copy, or refuses the batch naming what it lacks. A file is hashed once and the hash
kept with its size and modification time (in `.easel-hashes.json` in the folder); a file changed
since is hashed again before it is used, so a worker never runs a file whose hash differs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from common.hashing import sha256_file
from common.protocol import RunBatch
from gpu_worker.worker import LocalFileError

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")
CACHE_NAME = ".easel-hashes.json"


class ModelIndex:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int, int, str]] = {}  # relative path -> (size, mtime_ns, sha256)
        self._load_cache()

    @property
    def holds(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted({sha for _, _, sha in self._known.values()}))

    def scan(self) -> int:
        """Hash new and changed files, forget vanished ones; the number of files hashed."""
        found: dict[str, tuple[int, int]] = {}
        for path in self._model_files():
            try:
                st = path.stat()
            except OSError:
                continue
            found[path.relative_to(self.root).as_posix()] = (st.st_size, st.st_mtime_ns)
        with self._lock:
            stale = {rel for rel, (size, mtime, _) in self._known.items() if found.get(rel) != (size, mtime)}
        hashed = 0
        fresh: dict[str, tuple[int, int, str]] = {}
        for rel, (size, mtime) in found.items():
            if rel in stale or rel not in self._known:
                try:
                    fresh[rel] = (size, mtime, sha256_file(self.root / rel))
                    hashed += 1
                except OSError as e:
                    log.warning("could not hash %s: %s", rel, e)
        with self._lock:
            self._known = {rel: v for rel, v in self._known.items() if rel in found and rel not in stale} | fresh
        if hashed or stale:
            self._save_cache()
        return hashed

    def add(self, path: Path, sha256: str) -> None:
        """A file this worker has just written and hashed itself (a fetched one): known without
        hashing it again."""
        st = path.stat()
        with self._lock:
            self._known[path.relative_to(self.root).as_posix()] = (st.st_size, st.st_mtime_ns, sha256)
        self._save_cache()

    def forget(self, path: Path) -> None:
        with self._lock:
            self._known.pop(path.relative_to(self.root).as_posix(), None)
        self._save_cache()

    def path_for(self, sha256: str) -> Path | None:
        """This machine's file with that hash, checked again if it changed since it was hashed."""
        with self._lock:
            candidates = [rel for rel, (_, _, sha) in self._known.items() if sha == sha256]
        for rel in candidates:
            path = self.root / rel
            try:
                st = path.stat()
            except OSError:
                continue
            with self._lock:
                size, mtime, _ = self._known.get(rel, (-1, -1, ""))
            if (st.st_size, st.st_mtime_ns) == (size, mtime) or sha256_file(path) == sha256:
                return path
        return None

    def localise(self, batch: RunBatch) -> RunBatch:
        """The batch with every file it names replaced by this machine's copy; LocalFileError naming
        each file it lacks. The bot's paths are never opened."""
        missing: list[str] = []

        def local(use: object, sha256: str, name: str) -> object:
            path = self.path_for(sha256) if sha256 else None
            if path is None:
                missing.append(f"{name} [{sha256[:10] or 'no hash'}]")
                return use
            return dataclasses.replace(use, path=str(path))  # type: ignore[type-var]

        load = local(batch.load, batch.load.sha256, f"checkpoint {batch.load.name}")
        load = dataclasses.replace(
            load,  # type: ignore[type-var]
            components=tuple(local(c, c.sha256, f"{c.role} {c.name}") for c in batch.load.components),
        )
        localised = dataclasses.replace(
            batch,
            load=load,
            loras=tuple(local(u, u.sha256, f"LoRA {u.name}") for u in batch.loras),
            embeddings=tuple(local(u, u.sha256, f"embedding {u.name}") for u in batch.embeddings),
            controlnets=tuple(
                dataclasses.replace(  # type: ignore[type-var]
                    local(u, u.sha256, f"ControlNet {u.name}"),
                    encoder=local(u.encoder, u.encoder.sha256, f"CLIP vision {u.encoder.name}") if u.encoder else None,
                    annotators=tuple(local(a, a.sha256, f"annotator {a.name}") for a in u.annotators),
                )
                for u in batch.controlnets
            ),
            detectors=tuple(
                dataclasses.replace(u, detector=local(u.detector, u.detector.sha256, f"detector {u.detector.name}"))  # type: ignore[type-var]
                if u.detector
                else u
                for u in batch.detectors
            ),
            vae=local(batch.vae, batch.vae.sha256, f"VAE {batch.vae.name}") if batch.vae else None,
            hires_model=local(batch.hires_model, batch.hires_model.sha256, f"upscaler {batch.hires_model.name}")
            if batch.hires_model
            else None,
        )
        if missing:
            raise LocalFileError(f"this GPU worker does not hold {', '.join(missing)}")
        return localised

    def _model_files(self) -> list[Path]:
        files = []
        for folder, dirs, names in os.walk(self.root, followlinks=False):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files.extend(
                Path(folder) / n for n in names if n.lower().endswith(MODEL_SUFFIXES) and not n.startswith(".")
            )
        return files

    def _load_cache(self) -> None:
        try:
            data = json.loads((self.root / CACHE_NAME).read_text(encoding="utf-8"))
            self._known = {
                str(rel): (int(v[0]), int(v[1]), str(v[2]))
                for rel, v in data.items()
                if isinstance(v, list) and len(v) == 3 and len(str(v[2])) == 64
            }
        except (OSError, ValueError, TypeError, AttributeError):
            self._known = {}

    def _save_cache(self) -> None:
        with self._lock:
            data = json.dumps({rel: list(v) for rel, v in self._known.items()})
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f"{CACHE_NAME}.", suffix=".tmp")
        except OSError as e:  # a read-only models folder: hashes are kept in memory only
            log.warning("could not save the hash cache in %s: %s", self.root, e)
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(data)
            os.replace(tmp, self.root / CACHE_NAME)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            log.warning("could not save the hash cache in %s: %s", self.root, e)
