"""GPU workers on other machines, through Redis Streams (EASEL_BROKER=redis://…).

The bot stays the one scheduler: a remote worker is one more slot in the generation service, with
what its heartbeats say it can run (families, largest picture, the sha256 of every file it holds).
`BrokerClient` reads every worker's events from one stream through the bot's consumer group
(XREADGROUP, then XACK once handled) and writes commands to each worker's own stream.

Leases: a worker sends a heartbeat every second; one that has not been heard from for LEASE_SECONDS
(kill -9, a pulled cable, the broker down) is presumed gone and its running jobs go back to the head
of the queue for another worker, or fail naming the job after MAX_ATTEMPTS. Anything it sends later
is discarded: its batch is no longer its, and a job ends once. A batch the broker lost (a restart
without persistence) is noticed the same way: heartbeats that go on without it.

Nothing on the broker is pickled: entries are the worker protocol's JSON frames, validated on the
way in; one that is not ours is refused and logged. A worker opens only files from its own folder,
found by hash, so a forged command can run nothing a worker did not already hold.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from bot.generation.model_share import NeededFile
from bot.rules.limits import ValidRequest
from common.frame_signing import TO_BOT, TO_WORKER, SignatureError, Signer, Verifier
from common.protocol import (
    BOT_GROUP,
    EVENTS_STREAM,
    MAX_FRAME_BYTES,
    WORKER_GROUP,
    WORKER_KEY_PREFIX,
    BadFrame,
    RunBatch,
    WorkerHeartbeat,
    broker_entry,
    commands_stream,
    decode,
    encode,
    hires_size,
    read_broker_entry,
)

log = logging.getLogger(__name__)

LEASE_SECONDS = 4.0  # heartbeats are a second apart: a worker unheard for this long is presumed gone
LOST_BATCH_SECONDS = 3.0  # after a reconnection: a batch sent before it that heartbeats do not list was lost
READ_BLOCK_MS = 500
COMMANDS_MAXLEN = 1000
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
LOOK_AGAIN_SECONDS = 5.0  # a heartbeat from a worker not seen reading its commands: looked at again after this
MAX_LOOKED_AT = 1000


class BrokerUnavailable(Exception):
    pass


def files_needed(spec: ValidRequest) -> list[NeededFile]:
    """Every file a job reads, with its hash and the bot's copy: its checkpoint and components,
    LoRAs, embeddings, VAE, hires upscaler, ControlNets, their CLIP vision encoders and annotators, the detail pass's detectors."""
    load = spec.checkpoint.load_request()
    needed = [NeededFile(f"checkpoint {load.name}", load.sha256, load.path)]
    needed += [NeededFile(f"{c.role} {c.name}", c.sha256, c.path) for c in load.components]
    needed += [NeededFile(f"LoRA {u.name}", u.sha256, u.path) for u in spec.loras]
    needed += [NeededFile(f"embedding {u.name}", u.sha256, u.path) for u in spec.embeddings]
    if spec.vae:
        needed.append(NeededFile(f"VAE {spec.vae.name}", spec.vae.sha256, spec.vae.path))
    if spec.hires_model:
        needed.append(NeededFile(f"upscaler {spec.hires_model.name}", spec.hires_model.sha256, spec.hires_model.path))
    needed += [NeededFile(f"ControlNet {u.name}", u.sha256, u.path) for u in spec.controlnets]
    needed += [
        NeededFile(f"CLIP vision {u.encoder.name}", u.encoder.sha256, u.encoder.path) for u in spec.controlnets if u.encoder
    ]
    needed += [
        NeededFile(f"annotator {a.name}", a.sha256, a.path) for u in spec.controlnets for a in u.annotators
    ]
    needed += [
        NeededFile(f"detector {d.detector.name}", d.detector.sha256, d.detector.path) for d in spec.detectors if d.detector
    ]
    return needed


class RemoteWorker:
    """A worker on another machine, as the service sees it: what its latest heartbeat said."""

    remote = True

    def __init__(self, slot: int, heartbeat: WorkerHeartbeat, send: Callable[[RemoteWorker, object], None]) -> None:
        self.slot = slot
        self.worker_id = heartbeat.worker_id
        self._send = send
        self.batch: RunBatch | None = None
        self.dispatched_at = 0.0
        self.speed_measured_on = ""
        self.generation = 0
        self.pid: int | None = heartbeat.pid
        self.sending: asyncio.Task[None] | None = None  # the last command on its way (they keep their order)
        self.steps_per_second = 0.0
        self.cannot_fetch: dict[str, str] = {}  # sha256 -> why this worker could not fetch it (its word)
        self.update(heartbeat)

    def update(self, heartbeat: WorkerHeartbeat) -> None:
        self.heartbeat = heartbeat
        self.last_seen = time.monotonic()
        self.device = heartbeat.device
        self.machine = heartbeat.machine
        self.loaded, self.held_as = heartbeat.loaded, heartbeat.held_as
        self.steps_per_second = heartbeat.steps_per_second or self.steps_per_second
        self.memory_total, self.memory_free = heartbeat.memory_total, heartbeat.memory_free
        self.holds = frozenset(heartbeat.holds)

    @property
    def ready(self) -> bool:
        return True

    def finished(self, batch_id: str) -> None:
        """The batch ended: the last heartbeat, sent before it did, no longer counts it."""
        self.heartbeat = dataclasses.replace(
            self.heartbeat, batches=tuple(b for b in self.heartbeat.batches if b != batch_id)
        )

    @property
    def idle(self) -> bool:
        # A worker still busy with a batch the bot no longer counts as its (sent before the bot
        # restarted, or before it was presumed gone) is not idle: the next batch would wait behind it.
        return self.batch is None and not self.heartbeat.batches

    @property
    def name(self) -> str:
        return f"{self.worker_id} ({self.device} on {self.machine})"

    @property
    def label(self) -> str:
        """Where a job ran, as its record says."""
        return f"{self.device} on {self.machine} ({self.worker_id})"

    @property
    def fetches(self) -> bool:
        """Started with --fetch-missing: it fetches, by hash, the files a batch names and it lacks."""
        return self.heartbeat.fetches

    def lacks(self, spec: ValidRequest) -> list[NeededFile]:
        return [f for f in files_needed(spec) if f.sha256 not in self.holds]

    def fetch_refusal(self, spec: ValidRequest) -> str | None:
        """Why this worker will not be sent the job to fetch: a file it could not fetch before."""
        return next((f"worker {self.worker_id}: {self.cannot_fetch[f.sha256]}" for f in self.lacks(spec) if f.sha256 in self.cannot_fetch), None)

    def can_run(self, spec: ValidRequest) -> str | None:
        """None if this worker can run the job with the files it holds, else why not (one line)."""
        refused = self.can_take(spec)
        if refused:
            return refused
        missing = [f"{f.what} [{f.sha256[:10] or 'no hash'}]" for f in self.lacks(spec)]
        if missing:
            return f"worker {self.worker_id} does not hold {', '.join(missing)}"
        return None

    def can_take(self, spec: ValidRequest) -> str | None:
        """None if the job is of a family and size this worker runs (files aside), else why not."""
        if spec.checkpoint.family not in self.heartbeat.families:
            return f"worker {self.worker_id} does not run {spec.checkpoint.family} models"
        width, height = spec.width, spec.height
        if spec.parameters.hires_scale:
            width, height = hires_size(width, height, spec.parameters.hires_scale)
        if self.heartbeat.max_pixels and width * height > self.heartbeat.max_pixels:
            return f"worker {self.worker_id} takes at most {self.heartbeat.max_pixels:,} pixels"
        return None

    def send(self, command: object) -> None:
        self._send(self, command)

    async def stop(self) -> None:
        """A remote worker outlives the bot: it serves the next run."""


@dataclass
class BrokerState:
    connected: bool = False
    since: float = 0.0
    reason: str = ""

    def describe(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.since)) if self.since else "start"
        if self.connected:
            return f"connected since {when}"
        return f"unreachable since {when}: {self.reason}" if self.reason else "connecting"


HeartbeatCallback = Callable[[WorkerHeartbeat], None]
EventCallback = Callable[[str, object], None]


class BrokerClient:
    """The bot's side of the broker: events in (through the bot's consumer group), commands out."""

    def __init__(
        self,
        url: str,
        on_heartbeat: HeartbeatCallback,
        on_event: EventCallback,
        *,
        on_refused: Callable[[], None] = lambda: None,
        keys: dict[str, tuple[bytes, ...]] | None = None,
    ) -> None:
        self._url = url
        # Signed frames (common/frame_signing.py): every event verified under its worker's key,
        # every command signed with the key that worker's frames are signed with. None: unsigned.
        self._keys = keys
        self._verifier = Verifier(TO_BOT)
        self._signer = Signer(TO_WORKER)
        self._signing: dict[str, tuple[str, bytes]] = {}  # worker id -> (key name, key) its frames use
        self._sending = asyncio.Lock()
        if keys is None:
            log.warning("frames to and from remote workers are not signed (EASEL_WORKER_KEYS is unset): "
                        "anyone who can write to the broker can speak as a worker")
        self._on_heartbeat = on_heartbeat
        self._on_event = on_event
        self._on_refused = on_refused
        self.state = BrokerState()
        self.consumer = f"bot-{uuid.uuid4().hex[:8]}"
        self.refused = 0  # entries that were not ours (a forged or corrupted message)
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_connect = True
        self._closing = False
        self.connected_at = 0.0  # time.monotonic() of the latest (re)connection
        # A heartbeat makes a worker only when that worker reads its own command stream (the stream
        # has the workers' consumer group, which a worker makes before it says it is ready): a
        # heartbeat alone, forged by anyone who may write the events stream, would otherwise be sent
        # real prompts (signed frames, with EASEL_WORKER_KEYS, also keep out those who can write it). Checked once per worker, again at most every
        # LOOK_AGAIN_SECONDS for one not found; forged ids do not pile up (MAX_LOOKED_AT).
        self._readers: set[str] = set()
        self._looked_at: dict[str, float] = {}

    def _client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self._url, socket_timeout=READ_BLOCK_MS / 1000 + 5, socket_connect_timeout=5)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read_forever(), name="broker events")

    async def close(self) -> None:
        # The flag as well as the cancel: a cancel that lands inside the client's read can come back
        # as a connection error, which the loop would otherwise take for an outage and retry.
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()

    async def send(self, worker_id: str, command: object) -> None:
        """One command on the worker's stream; BrokerUnavailable if the broker cannot take it."""
        client = self._redis
        if client is None or not self.state.connected:
            raise BrokerUnavailable(f"the broker is {self.state.describe()}")
        if self._keys is not None and worker_id not in self._signing:  # no signed frame from it: not a worker of this bot
            raise BrokerUnavailable(f"worker {worker_id[:60]} has sent no signed frame")
        # One command at a time: signed frames must reach a worker's stream in the order they were
        # numbered (the pool's connections could otherwise reorder two, and the later would read as a replay).
        async with self._sending:
            if self._keys is None:
                fields = broker_entry("bot", command)
            else:
                name, key = self._signing[worker_id]
                fields = self._signer.fields(name, key, worker_id, "bot", encode(command))
            try:
                await client.xadd(commands_stream(worker_id), fields, maxlen=COMMANDS_MAXLEN, approximate=True)
            except redis.RedisError as e:
                raise BrokerUnavailable(f"the broker did not take the command ({type(e).__name__}: {e})") from None

    async def forget(self, worker_id: str) -> None:
        """A worker presumed gone: the commands it had not taken are dropped (they may hold pictures);
        its group stays, should it come back and read on."""
        if self._redis is not None and self.state.connected:
            try:
                await self._redis.xtrim(commands_stream(worker_id), maxlen=0)
            except redis.RedisError as e:
                log.warning("could not clear the commands of worker %s: %s", worker_id, e)

    async def _read_forever(self) -> None:
        delay = 0.0
        while not self._closing:
            try:
                if self._redis is None:
                    self._redis = self._client()
                await self._join_group(self._redis)
                if not self.state.connected:
                    self.state = BrokerState(True, time.time())
                    self.connected_at = time.monotonic()
                    log.info("broker %s", self.state.describe())
                delay = 0.0
                await self._read(self._redis)
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as e:
                if self._closing:
                    return
                reason = f"{type(e).__name__}: {e}"
                if self.state.connected or not self.state.reason:
                    self.state = BrokerState(False, time.time(), reason)
                    log.warning("broker %s; retrying with backoff", self.state.describe())
                elif reason != self.state.reason:  # still down, for another reason now: said once
                    self.state.reason = reason
                    log.warning("broker still unreachable: %s", reason)
                delay = min(BACKOFF_MAX, max(BACKOFF_FIRST, delay * 2))
                await asyncio.sleep(delay)

    async def _join_group(self, client: aioredis.Redis) -> None:
        """The bot's consumer group on the events stream. At the bot's start it begins at the end:
        what workers said to an earlier run is stale. After an outage it goes on where it was, or,
        when the broker lost its data, from the start of the new stream (what workers kept for it)."""
        start = "$" if self._first_connect else "0"
        try:
            await client.xgroup_create(EVENTS_STREAM, BOT_GROUP, id=start, mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
            if self._first_connect:
                await client.xgroup_setid(EVENTS_STREAM, BOT_GROUP, id="$")
        self._first_connect = False

    async def _read(self, client: aioredis.Redis) -> None:
        while not self._closing:
            try:
                answer = await client.xreadgroup(
                    BOT_GROUP, self.consumer, {EVENTS_STREAM: ">"}, count=200, block=READ_BLOCK_MS
                )
            except redis.ResponseError as e:
                if "NOGROUP" in str(e):  # the broker restarted without its data
                    await self._join_group(client)
                    continue
                raise
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    self._handle(entry_id, fields)
                if entries:
                    # Handled: acknowledged, and deleted, so the stream holds only what is unread
                    # (results carry pictures; MAXLEN alone would keep thousands of them).
                    ids = [entry_id for entry_id, _ in entries]
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.xack(EVENTS_STREAM, BOT_GROUP, *ids)
                        pipe.xdel(EVENTS_STREAM, *ids)
                        await pipe.execute()

    def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            sender, message = read_broker_entry(fields)
            if isinstance(message, WorkerHeartbeat) and message.worker_id != sender:
                raise BadFrame(f"a heartbeat for {message.worker_id[:40]!r} sent as {sender[:40]!r}")
            if self._keys is not None:
                try:
                    self._signing[sender] = self._verifier.check(self._keys, sender, fields)
                except SignatureError as e:
                    raise BadFrame(f"from {sender[:60]}: {e}") from None
        except BadFrame as e:
            self.refused += 1
            self._on_refused()
            log.warning("refused broker entry %s: %s", entry_id.decode(errors="replace"), e)
            return
        if isinstance(message, WorkerHeartbeat):
            if message.worker_id in self._readers:
                self._on_heartbeat(message)
            else:
                self._look_for_reader(message.worker_id)
        else:
            self._on_event(sender, message)

    def _look_for_reader(self, worker_id: str) -> None:
        now = time.monotonic()
        if now - self._looked_at.get(worker_id, -LOOK_AGAIN_SECONDS) < LOOK_AGAIN_SECONDS or self._redis is None:
            return
        self._looked_at[worker_id] = now
        while len(self._looked_at) > MAX_LOOKED_AT:
            del self._looked_at[next(iter(self._looked_at))]
        asyncio.get_running_loop().create_task(self._reads_its_commands(self._redis, worker_id), name="broker: a new worker")

    async def _reads_its_commands(self, client: aioredis.Redis, worker_id: str) -> None:
        try:
            groups = await client.xinfo_groups(commands_stream(worker_id))
        except redis.ResponseError:  # no such stream
            groups = []
        except redis.RedisError:  # the broker is away: the next heartbeat asks again
            self._looked_at.pop(worker_id, None)
            return
        names = {g["name"].decode(errors="replace") if isinstance(g["name"], bytes) else g["name"] for g in groups}
        if WORKER_GROUP in names:
            self._readers.add(worker_id)
            return
        self.refused += 1
        self._on_refused()
        log.warning("refused the heartbeats of %s: no worker of that name reads its commands", worker_id[:60])


async def list_workers(url: str) -> list[WorkerHeartbeat]:
    """Every worker's latest heartbeat on the broker (`python bot.py workers`), newest first."""
    client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = [key async for key in client.scan_iter(match=WORKER_KEY_PREFIX + "*", count=500)]
        raw = await client.mget(keys) if keys else []
    except redis.RedisError as e:
        raise BrokerUnavailable(f"the broker could not be asked ({type(e).__name__}: {e})") from None
    finally:
        await client.aclose()
    beats = []
    for value in raw:
        if value is None:
            continue
        if len(value) > MAX_FRAME_BYTES:
            continue
        try:
            message = decode(value)
        except BadFrame:
            continue
        if isinstance(message, WorkerHeartbeat):
            beats.append(message)
    return sorted(beats, key=lambda b: -b.sent_at)
