"""Signed frames between the bot and its remote workers: who may write the broker must not be able to
speak in a worker's name (a forged result, a forged picture-check score) or in the bot's (a forged
batch), nor replay what one of them said.

Each worker machine has a named key the bot also holds (EASEL_WORKER_KEYS on the bot: `NAME KEY` per
line; the worker's --key-file: its own `NAME KEY`); a worker's id is new at each start, its key's name
is not. Every broker entry then carries, beside the sender `w` and the frame `m`:
- `k`: the key's name (a worker is held to the key its first frame was signed with);
- `e`: the sending process's session, random per start;
- `q`: its sequence number in that session, counting from 1;
- `t`: its wall-clock time (ms);
- `s`: HMAC-SHA256 under the worker's key of all of these, the direction (worker to bot or bot to
  worker) and the worker's id, so a frame is good for one direction, one worker and one place in
  one session only.
The receiver keeps, per peer, its current session and the highest sequence accepted: a frame at or
below it is a replay, a frame of a session that was replaced is a replay, and a frame more than
MAX_AGE_SECONDS old (clocks are NTP-kept; a restarted receiver has no memory) is refused too.
Python's hmac and hashlib do the cryptography; compare_digest the comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError

SIGNED_FIELDS = frozenset({b"w", b"m", b"k", b"e", b"q", b"t", b"s"})
TO_BOT, TO_WORKER = b"worker-to-bot", b"bot-to-worker"
MAX_AGE_SECONDS = 120.0
MIN_KEY_CHARS = 32
_RETIRED_KEPT = 64  # sessions of a peer remembered as replaced


class SignatureError(Exception):
    """A frame that is not signed as it must be: unsigned, wrongly signed, or replayed."""


def _mac(key: bytes, direction: bytes, worker_id: str, name: bytes, session: bytes, seq: bytes, stamp: bytes, message: bytes) -> str:
    parts = (b"easel-frame-1", direction, worker_id.encode(), name, session, seq, stamp, message)
    return hmac.new(key, b"\0".join(parts), hashlib.sha256).hexdigest()


class Signer:
    """One process's signing of its frames in one direction: a session of its own, numbered frames."""

    def __init__(self, direction: bytes) -> None:
        self.direction = direction
        self.session = secrets.token_hex(8).encode()
        self._seq = 0
        self._lock = threading.Lock()  # a worker sends from two threads (events, heartbeats)

    def fields(self, name: str, key: bytes, worker_id: str, sender: str, message: bytes) -> dict[str, bytes]:
        """A broker entry of `message` from `sender`, signed under the key `name` for the frames of
        `worker_id` in this signer's direction."""
        with self._lock:
            self._seq += 1
            seq = str(self._seq).encode()
        stamp = str(int(time.time() * 1000)).encode()
        mac = _mac(key, self.direction, worker_id, name.encode(), self.session, seq, stamp, message)
        return {"w": sender.encode(), "m": message, "k": name.encode(), "e": self.session, "q": seq, "t": stamp, "s": mac.encode()}


@dataclass
class _Peer:
    name: str = ""  # the key its frames are signed with
    session: bytes = b""
    seq: int = 0
    retired: OrderedDict[bytes, None] = field(default_factory=OrderedDict)


class Verifier:
    """The receiving side: a frame's signature under one of the peer's keys, and its place after the
    last one accepted from that peer."""

    def __init__(self, direction: bytes) -> None:
        self.direction = direction
        self._peers: dict[str, _Peer] = {}

    def check(self, keys: dict[str, tuple[bytes, ...]], worker_id: str, fields: dict[bytes, bytes]) -> tuple[str, bytes]:
        """(the key's name, the key) that signed the frame of `worker_id`; SignatureError saying what
        is wrong with it. `keys`: every key by its name (a name has two while one replaces the other)."""
        if set(fields) != SIGNED_FIELDS:
            raise SignatureError("unsigned (every frame must be signed: EASEL_WORKER_KEYS)")
        name, session, seq_text, stamp = fields[b"k"].decode(errors="replace"), fields[b"e"], fields[b"q"], fields[b"t"]
        if not (seq_text.isdigit() and stamp.isdigit() and 0 < len(session) <= 64 and len(seq_text) <= 19 and len(stamp) <= 19):
            raise SignatureError("a signature's session, sequence or time is malformed")
        if name not in keys:
            raise SignatureError(f"signed with a key named {name[:60]!r}, which is not among the keys here")
        signed_by = next(
            (
                key
                for key in keys[name]
                if hmac.compare_digest(
                    _mac(key, self.direction, worker_id, fields[b"k"], session, seq_text, stamp, fields[b"m"]).encode(), fields[b"s"]
                )
            ),
            None,
        )
        if signed_by is None:
            raise SignatureError(f"not signed with the key {name[:60]!r}")
        if abs(time.time() - int(stamp) / 1000) > MAX_AGE_SECONDS:
            raise SignatureError(f"signed more than {MAX_AGE_SECONDS:.0f} s from now (a replay, or a clock that is off)")
        seq, peer = int(seq_text), self._peers.setdefault(worker_id, _Peer(name))
        if peer.name != name:  # one key's holder may not speak as a worker that uses another
            raise SignatureError(f"{worker_id[:60]} signs with the key {peer.name!r}, not {name[:60]!r}")
        if session == peer.session:
            if seq <= peer.seq:
                raise SignatureError(f"a replay (frame {seq} of a session at {peer.seq})")
        elif session in peer.retired:
            raise SignatureError("a replay (a frame of a session that has ended)")
        else:  # the peer started again: its earlier session is over
            if peer.session:
                peer.retired[peer.session] = None
                while len(peer.retired) > _RETIRED_KEPT:
                    peer.retired.popitem(last=False)
            peer.session = session
        peer.seq = seq
        return name, signed_by


def read_key(text: str, where: str) -> bytes:
    key = text.strip()
    if len(key) < MIN_KEY_CHARS or not key.isprintable() or " " in key:
        raise ConfigError(f"{where}: a key is at least {MIN_KEY_CHARS} printable characters without spaces (e.g. `openssl rand -hex 32`)")
    return key.encode()


def read_worker_keys(path: Path) -> dict[str, tuple[bytes, ...]]:
    """The bot's keys: one line per key name (a machine, a group of workers), `NAME KEY [NEW_KEY]`
    (two keys while one replaces the other); blank lines and `#` comments skipped."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"EASEL_WORKER_KEYS: cannot read {path}: {e.strerror}") from None
    keys: dict[str, tuple[bytes, ...]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"EASEL_WORKER_KEYS {path.name} line {number}"
        if len(words) not in (2, 3):
            raise ConfigError(f"{where}: write `NAME KEY`, or `NAME KEY NEW_KEY` while replacing a key")
        if words[0] in keys:
            raise ConfigError(f"{where}: the key name {words[0]} is given twice")
        keys[words[0]] = tuple(read_key(word, where) for word in words[1:])
    if not keys:
        raise ConfigError(f"EASEL_WORKER_KEYS: {path} names no key")
    return keys


def read_key_file(path: Path) -> tuple[str, bytes]:
    """A worker's key (--key-file): one line, `NAME KEY`, as the bot's file has it."""
    try:
        words = path.read_text().split("#", 1)[0].split()
    except OSError as e:
        raise ConfigError(f"--key-file: cannot read {path}: {e.strerror}") from None
    if len(words) != 2:
        raise ConfigError(f"--key-file {path}: write one line, `NAME KEY`, the name and key the bot's EASEL_WORKER_KEYS gives")
    return words[0], read_key(words[1], f"--key-file {path}")
