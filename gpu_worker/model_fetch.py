"""A remote worker fetching, by sha256, the files a batch names and it lacks (`--fetch-missing`).

The batch carries a ticket per missing file (common/protocol.FetchTicket: hash, size, addresses with
their own tokens; bot/generation/model_share.py). Each file is downloaded with httpx into
`MODELS/fetched/.partial/<sha256>.part`, resumed with a Range request after a cut (the bytes already
there are kept, and hashed again on a restart), never past its size; then its sha256 is checked —
bytes that do not match are deleted and the batch refused, naming the file — and it is moved into
`MODELS/fetched/<sha256><suffix>` in one rename, so a file under that name is always whole and
verified. From then on the worker holds it like any other: its heartbeats say so, and the bot
sends it the next job for that file without a fetch.

Fetched files share a disk budget (`--fetch-budget-gb`); to make room, the least recently used of
them go first, never one the running batch reads, never a file the operator put in the folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from common.protocol import BatchLoading, FetchTicket, RunBatch
from gpu_worker.model_index import MODEL_SUFFIXES, ModelIndex
from gpu_worker.worker import LocalFileError

log = logging.getLogger("easel.fetch")

FETCHED = "fetched"
PARTIAL = ".partial"  # a dot folder: the index never lists what is in it
LOCKS = ".locks"  # an empty file per hash fetched, locked while one worker of the machine fetches it
USAGE = ".usage.json"
CHUNK = 4 << 20
TRIES = 5  # connections per file: each after a cut resumes where the last stopped
RETRY_FIRST, RETRY_MAX = 0.5, 8.0
DISK_RESERVE = 1 << 30  # left free on the disk beside the budget
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FetchError(LocalFileError):
    """A file could not be fetched: the batch is refused with this message."""


@dataclass
class _Partial:
    path: Path
    have: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)  # hashlib's sha256 object

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.have, self.hasher = 0, hashlib.sha256()


class Fetcher:
    def __init__(
        self,
        index: ModelIndex,
        budget_bytes: int,
        send: Callable[[object], None] = lambda event: None,
        *,
        on_bytes: Callable[[int], None] = lambda n: None,
        client: httpx.Client | None = None,
        retry_first: float = RETRY_FIRST,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.budget = budget_bytes
        self.folder = index.root / FETCHED
        self.partial = self.folder / PARTIAL
        self.partial.mkdir(parents=True, exist_ok=True)
        self.locks = self.folder / LOCKS
        self.locks.mkdir(exist_ok=True)
        self._send = send
        self._on_bytes = on_bytes
        self._retry_first = retry_first
        self._clock = clock  # when a file was last used: the eviction order
        # httpx logs each request's whole address at INFO, and a ticket's address holds its token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # No redirects: a ticket's address is the whole of where its bytes may come from.
        self._client = client or httpx.Client(timeout=httpx.Timeout(30.0, read=120.0), follow_redirects=False)
        self._usage = self._load_usage()

    # --- the batch ---------------------------------------------------------------------------

    def localise(self, batch: RunBatch) -> RunBatch:
        """The batch on this machine's files, fetching first those it lacks and has tickets for;
        LocalFileError naming what it lacks otherwise."""
        if batch.fetch:
            keep = batch_hashes(batch)
            for ticket in batch.fetch:
                if self.index.path_for(ticket.sha256) is None:
                    self._send(BatchLoading(batch.batch_id, f"{ticket.name} ({_size(ticket.size)})", "fetch"))
                    try:
                        self.fetch(ticket, keep)
                    except FetchError as e:  # the bot sends the jobs to another worker, never this file here again
                        raise FetchError(str(e), (ticket.sha256,)) from None
        localised = self.index.localise(batch)
        self._used(batch_hashes(batch))
        return localised

    # --- one file ----------------------------------------------------------------------------

    def fetch(self, ticket: FetchTicket, keep: frozenset[str] | set[str] = frozenset()) -> Path:
        sha = ticket.sha256
        if not _SHA256.fullmatch(sha) or ticket.suffix not in MODEL_SUFFIXES or ticket.size < 0:
            raise FetchError(f"refused a ticket for {ticket.name}: not a model file's hash, suffix and size")
        if ticket.size > self.budget:
            raise FetchError(
                f"{ticket.name} is {_size(ticket.size)}, more than this worker's fetch budget of {_size(self.budget)}"
            )
        # The workers of one machine (--devices) share its folder: one fetches a file while the
        # others wait, then find it there, whole (a file under its hash's name was verified first).
        with (self.locks / sha).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            final = self.folder / f"{sha}{ticket.suffix}"
            if final.is_file():
                self.index.add(final, sha)
                self._used({sha})
                return final
            return self._fetch(ticket, keep)

    def _fetch(self, ticket: FetchTicket, keep: frozenset[str] | set[str]) -> Path:
        sha = ticket.sha256
        part = self._resume(self.partial / f"{sha}.part", ticket.size)
        self._make_room(ticket, part.have, keep | {sha})
        started, first = time.perf_counter(), part.have
        errors: list[str] = []
        urls = [u for u in ticket.urls if urlsplit(u).scheme in ("http", "https")]
        delay = self._retry_first
        for _ in range(TRIES):
            if part.have == ticket.size or not urls:
                break
            url = urls[0]
            try:
                self._download(url, part, ticket.size)
            except httpx.HTTPStatusError as e:  # refused, gone, expired: the next source
                errors.append(f"{_host(url)} answered {e.response.status_code}")
                urls.pop(0)
            except httpx.TransportError as e:  # a cut: the same source again, from where it stopped
                errors.append(f"{_host(url)}: {type(e).__name__}")
                log.warning("fetch of %s cut at %d of %d bytes (%s); resuming", ticket.name, part.have, ticket.size, e)
                time.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
        if part.have != ticket.size:
            raise FetchError(f"could not fetch {ticket.name}: {'; '.join(errors[-3:]) or 'no source it may use'}")
        if part.hasher.hexdigest() != sha:
            part.restart()
            raise FetchError(f"the bytes fetched for {ticket.name} do not match its sha256 [{sha[:10]}]: deleted")
        final = self.folder / f"{sha}{ticket.suffix}"
        os.replace(part.path, final)  # whole and verified, or not there
        _sync_folder(self.folder)
        self.index.add(final, sha)
        self._used({sha})
        seconds = time.perf_counter() - started
        log.info(
            "fetched %s [%s]: %s in %.1f s (%.0f MB/s)",
            ticket.name,
            sha[:10],
            _size(ticket.size),
            seconds,
            (ticket.size - first) / 1e6 / max(seconds, 1e-6),
        )
        return final

    def _resume(self, path: Path, size: int) -> _Partial:
        """What a cut left: its bytes are kept and hashed again (a restarted worker has no hasher)."""
        part = _Partial(path)
        try:
            have = path.stat().st_size
        except OSError:
            return part
        if have > size:
            part.restart()
            return part
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                part.hasher.update(chunk)
        part.have = have
        return part

    def _download(self, url: str, part: _Partial, size: int) -> None:
        headers = {"Range": f"bytes={part.have}-"} if part.have else {}
        with self._client.stream("GET", url, headers=headers) as response:
            if response.status_code == 206:
                start = _range_start(response.headers.get("content-range", ""))
                if start != part.have:
                    part.restart()
                    raise httpx.RemoteProtocolError(f"asked from byte {part.have}, sent from {start}")
            elif response.status_code == 200:
                if part.have:
                    part.restart()  # the source does not resume: from the start
            else:
                response.raise_for_status()
                raise httpx.HTTPStatusError(f"answered {response.status_code}", request=response.request, response=response)
            with part.path.open("ab", buffering=CHUNK) as out:
                try:
                    # As they come off the socket: a cut loses nothing already received.
                    for chunk in response.iter_bytes():
                        if part.have + len(chunk) > size:
                            part.restart()
                            raise FetchError("a source sent more bytes than the file's size: deleted")
                        out.write(chunk)
                        part.hasher.update(chunk)
                        part.have += len(chunk)
                        self._on_bytes(len(chunk))
                finally:
                    out.flush()
                    os.fsync(out.fileno())

    # --- the budget --------------------------------------------------------------------------

    def _make_room(self, ticket: FetchTicket, have: int, keep: frozenset[str] | set[str]) -> None:
        """Least recently used fetched files go (partials of other files first) until the new one
        fits in the budget and on the disk."""
        needed = ticket.size - have
        held = self._held()
        others = sorted((p for p in self.partial.glob("*.part") if p.name != f"{ticket.sha256}.part"), key=_mtime)
        used = sum(size for _, size, _ in held) + sum(_file_size(p) for p in self.partial.glob("*.part"))
        candidates = [(path, size) for path, size, sha in sorted(held, key=lambda h: self._usage.get(h[2], 0.0)) if sha not in keep]
        evictable = [(p, _file_size(p)) for p in others] + candidates

        def short() -> bool:
            return used + needed > self.budget or shutil.disk_usage(self.folder).free < needed + DISK_RESERVE

        while short() and evictable:
            path, size = evictable.pop(0)
            path.unlink(missing_ok=True)
            if path.parent == self.folder:
                self.index.forget(path)
            used -= size
            log.info("fetch budget: removed %s (%s), least recently used", path.name, _size(size))
        if short():
            raise FetchError(
                f"no room to fetch {ticket.name} ({_size(ticket.size)}): the fetch budget is {_size(self.budget)}, "
                f"partly held by files this batch reads, and the disk has {_size(shutil.disk_usage(self.folder).free)} free"
            )

    def _held(self) -> list[tuple[Path, int, str]]:
        """Fetched files: (path, size, sha256) — only those named as this worker names them."""
        held = []
        for path in self.folder.iterdir():
            sha = path.name.split(".", 1)[0]
            if path.is_file() and _SHA256.fullmatch(sha) and path.suffix in MODEL_SUFFIXES:
                held.append((path, _file_size(path), sha))
        return held

    def _used(self, hashes: set[str]) -> None:
        now = self._clock()
        fetched = {sha for _, _, sha in self._held()}
        touched = hashes & fetched
        if not touched:
            return
        self._usage = {sha: t for sha, t in self._usage.items() if sha in fetched} | dict.fromkeys(touched, now)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f"{USAGE}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(self._usage, out)
        os.replace(tmp, self.folder / USAGE)

    def _load_usage(self) -> dict[str, float]:
        try:
            data = json.loads((self.folder / USAGE).read_text(encoding="utf-8"))
            return {str(k): float(v) for k, v in data.items() if _SHA256.fullmatch(str(k))}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}


def batch_hashes(batch: RunBatch) -> set[str]:
    """The sha256 of every file a batch reads."""
    hashes = {batch.load.sha256, *(c.sha256 for c in batch.load.components)}
    hashes |= {u.sha256 for u in (*batch.loras, *batch.embeddings, *batch.controlnets)}
    hashes |= {u.encoder.sha256 for u in batch.controlnets if u.encoder}
    hashes |= {a.sha256 for u in batch.controlnets for a in u.annotators}
    hashes |= {u.detector.sha256 for u in batch.detectors if u.detector}
    hashes |= {u.sha256 for u in (batch.vae, batch.hires_model) if u is not None}
    hashes |= {t.sha256 for t in batch.fetch}
    return hashes - {""}


def _range_start(content_range: str) -> int:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    return int(match.group(1)) if match else -1


def _host(url: str) -> str:
    """An address for messages and logs: its host only (its query holds a token)."""
    return urlsplit(url).netloc or "a source"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 100_000_000 else f"{n / 1e6:.1f} MB"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
