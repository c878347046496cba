"""A GPU worker on another machine: `python -m gpu_worker remote --broker redis://… --models-dir DIR`.

The same worker as the bot's own (gpu_worker/worker.run_worker), with Redis Streams in place of the
pipe: commands arrive on this worker's stream through its consumer group and stay pending until
the batch they started has finished (then XACK); events go on the shared events stream, in order,
retried through a broker outage. A heartbeat every second says what the worker holds (sha256 of
every file in its own models folder), what is loaded and what it is running; the bot schedules on
that and presumes the worker gone when heartbeats stop. Files are found by hash in the worker's own
folder (gpu_worker/model_index.py); the bot's paths are never opened.

With several devices (`--devices cuda:0,cuda:1`) one process runs per device. The broker's URL is
taken from EASEL_BROKER when not given, so a password need not appear in the process list.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

from common.families import SUPPORTED_FAMILIES
from common.frame_signing import TO_BOT, TO_WORKER, SignatureError, Signer, Verifier
from common.protocol import (
    EVENTS_MAXLEN,
    EVENTS_STREAM,
    WORKER_GROUP,
    WORKER_KEY_PREFIX,
    WORKER_KEY_SECONDS,
    BadFrame,
    BatchFailed,
    BatchFinished,
    BatchLoading,
    BatchProgress,
    CancelJob,
    JobDone,
    RunBatch,
    WorkerHeartbeat,
    WorkerReady,
    broker_entry,
    commands_stream,
    encode,
    read_broker_entry,
)
from common.worker_config import WorkerConfig, engine_flags
from gpu_worker.model_index import ModelIndex
from gpu_worker.worker import resolve_device, run_worker

log = logging.getLogger("easel.remote")

HEARTBEAT_SECONDS = 1.0
RESCAN_SECONDS = 30.0
READ_BLOCK_MS = 1000
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
PROGRESS_EVERY_SECONDS = 0.25


@dataclass
class RemoteOptions:
    broker: str
    models_dir: Path
    device: str = "auto"
    max_pixels: int = 0
    families: tuple[str, ...] = SUPPORTED_FAMILIES
    metrics_port: int | None = None
    cache_device_gb: float | None = None
    log_level: str = "INFO"
    engine: dict[str, object] = field(default_factory=dict)  # WorkerConfig's engine options (common/worker_config.py)
    worker_id: str = field(default="")
    key: tuple[str, bytes] | None = None  # (name, key): frames signed, commands verified (common/frame_signing.py)
    key_file: Path | None = None  # where it was read from: each device's process reads it again
    # --fetch-missing: files a batch names and this worker lacks are fetched by hash into
    # MODELS/fetched, within this many GB (gpu_worker/model_fetch.py); None: never fetched.
    fetch_budget_gb: float | None = None


def connect(url: str) -> redis.Redis:
    """A blocking client whose reads outlast a blocking XREADGROUP; rediss:// gives TLS, the URL's
    user and password the ACL login (redis-py reads both from it)."""
    return redis.Redis.from_url(url, socket_timeout=READ_BLOCK_MS / 1000 + 5, socket_connect_timeout=5)


class Backoff:
    def __init__(self) -> None:
        self.delay = 0.0

    def wait(self, what: str, error: Exception) -> None:
        if not self.delay:
            log.warning("broker unreachable (%s: %s); retrying", what, error)
        self.delay = min(BACKOFF_MAX, max(BACKOFF_FIRST, self.delay * 2))
        time.sleep(self.delay)

    def ok(self, what: str) -> None:
        if self.delay:
            log.info("broker reachable again (%s)", what)
        self.delay = 0.0


class BrokerLink:
    """This worker's side of the broker: commands in (receive), events out (send), heartbeats."""

    def __init__(self, options: RemoteOptions, index: ModelIndex, metrics: WorkerMetrics | None) -> None:
        self.options = options
        self.worker_id = options.worker_id
        self.index = index
        self.metrics = metrics
        self._commands = commands_stream(self.worker_id)
        self._reader = connect(options.broker)
        self._writer = connect(options.broker)
        self._outbox: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: dict[str, bytes] = {}  # batch id -> its command's entry id (XACK when it finishes)
        self._received: list[str] = []  # batch ids received and not yet finished, in order
        self._loaded: tuple[str, ...] = ()
        self._held_as: tuple[str, ...] = ()
        self._progress_sent: dict[str, float] = {}  # batch id -> when its last progress went out
        self._speed = 0.0
        self._group_ready = False
        self.device = options.device
        self.started_at = time.time()
        self.ready = threading.Event()  # set with WorkerReady: heartbeats (which invite batches) start then
        self._signer = Signer(TO_BOT)
        self._verifier = Verifier(TO_WORKER)

    # --- commands in -----------------------------------------------------------------------------

    def receive(self) -> object:
        backoff = Backoff()
        while True:
            try:
                self._ensure_group()
                answer = self._reader.xreadgroup(
                    WORKER_GROUP, self.worker_id, {self._commands: ">"}, count=1, block=READ_BLOCK_MS
                )
                backoff.ok("commands")
            except redis.ResponseError as e:
                if "NOGROUP" in str(e):  # the broker restarted without its data: make the group again
                    self._group_ready = False
                    continue
                backoff.wait("commands", e)
                continue
            except redis.RedisError as e:
                self._group_ready = False
                backoff.wait("commands", e)
                continue
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    message = self._accept(entry_id, fields)
                    if message is not None:
                        return message

    def _accept(self, entry_id: bytes, fields: dict[bytes, bytes]) -> object | None:
        try:
            _sender, message = read_broker_entry(fields)
            if self.options.key is not None:  # with a key, only commands the bot signed for this worker
                name, key = self.options.key
                try:
                    self._verifier.check({name: (key,)}, self.worker_id, fields)
                except SignatureError as e:
                    raise BadFrame(str(e)) from None
        except BadFrame as e:
            if self.metrics is not None:
                self.metrics.refused.inc()
            log.error("refused a command entry %s: %s", entry_id.decode(), e)
            self._ack(entry_id)
            return None
        if isinstance(message, RunBatch):
            with self._lock:
                if message.batch_id in self._pending:  # delivered twice: it is already here
                    return None
                self._pending[message.batch_id] = entry_id
                self._received.append(message.batch_id)
            return message
        self._ack(entry_id)
        if isinstance(message, CancelJob):
            return message
        log.error("refused a %s on the command stream: not a command", type(message).__name__)
        return None

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._reader.xgroup_create(self._commands, WORKER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    def _ack(self, entry_id: bytes) -> None:
        """Acknowledged and deleted: a batch's command may carry pictures, and is done with."""
        try:
            pipe = self._writer.pipeline(transaction=False)
            pipe.xack(self._commands, WORKER_GROUP, entry_id)
            pipe.xdel(self._commands, entry_id)
            pipe.execute()
        except redis.RedisError as e:  # the entry stays pending; a batch id is never run twice here
            log.warning("could not acknowledge command %s: %s", entry_id.decode(), e)

    # --- events out ------------------------------------------------------------------------------

    def send(self, event: object) -> None:
        # What heartbeats say changes in the same step as the event is queued, so a heartbeat never
        # contradicts an event queued before it (the bot reads them in this order).
        if isinstance(event, WorkerReady):
            self.ready.set()
        with self._lock:
            if self.metrics is not None:
                self.metrics.saw(event)
            if isinstance(event, BatchFinished):
                self._loaded, self._held_as, self._speed = event.loaded, event.held_as, event.steps_per_second
                self._progress_sent.pop(event.batch_id, None)
                if event.batch_id in self._received:
                    self._received.remove(event.batch_id)
            elif isinstance(event, BatchProgress) and event.step < event.total:
                # Every step is an event on the pipe; on the broker, a few a second say as much (a
                # Discord message shows progress every 1.5 s) for a fraction of the traffic.
                now = time.monotonic()
                if now - self._progress_sent.get(event.batch_id, 0.0) < PROGRESS_EVERY_SECONDS:
                    return
                self._progress_sent[event.batch_id] = now
            self._outbox.put(event)

    def run_sender(self) -> None:
        """Events go out in order; through an outage each waits and is sent when the broker is back
        (a heartbeat with a newer one behind it is dropped instead)."""
        backoff = Backoff()
        while True:
            event = self._outbox.get()
            while True:
                if isinstance(event, WorkerHeartbeat) and not self._outbox.empty():
                    break
                try:
                    self._writer.xadd(EVENTS_STREAM, self._entry(event), maxlen=EVENTS_MAXLEN, approximate=True)
                    if isinstance(event, WorkerHeartbeat):
                        self._writer.set(WORKER_KEY_PREFIX + self.worker_id, encode(event), ex=WORKER_KEY_SECONDS)
                    backoff.ok("events")
                    if self.metrics is not None:
                        self.metrics.broker_up.set(1)
                    break
                except redis.RedisError as e:
                    if self.metrics is not None:
                        self.metrics.broker_up.set(0)
                    backoff.wait("events", e)
            if isinstance(event, BatchFinished):
                self._finished(event.batch_id)

    def _entry(self, event: object) -> dict[str, bytes]:
        """The event as a broker entry: signed when this worker has a key. Made at each try: a retry
        after an outage is a new frame, not a replay of the one the broker may have lost."""
        if self.options.key is None:
            return broker_entry(self.worker_id, event)
        name, key = self.options.key
        return self._signer.fields(name, key, self.worker_id, self.worker_id, encode(event))

    def _finished(self, batch_id: str) -> None:
        """The batch's command is acknowledged once the bot can read that it finished."""
        with self._lock:
            entry_id = self._pending.pop(batch_id, None)
        if entry_id is not None:
            self._ack(entry_id)

    # --- heartbeats ------------------------------------------------------------------------------

    def queue_heartbeat(self) -> None:
        """A heartbeat, built and queued in one step with the lock send holds: see send."""
        from gpu_worker.device_memory import memory  # torch, loaded by the worker by now

        total, free = memory(self.device)
        holds = self.index.holds
        with self._lock:
            heartbeat = WorkerHeartbeat(
                worker_id=self.worker_id,
                machine=socket.gethostname(),
                device=self.device,
                pid=os.getpid(),
                started_at=self.started_at,
                memory_total=total,
                memory_free=free,
                families=self.options.families,
                max_pixels=self.options.max_pixels,
                holds=holds,
                loaded=self._loaded,
                held_as=self._held_as,
                batches=tuple(self._received),
                steps_per_second=self._speed,
                sent_at=time.time(),
                fetches=self.options.fetch_budget_gb is not None,
            )
            self._outbox.put(heartbeat)

    def run_heartbeats(self) -> None:
        """From WorkerReady on (torch loaded, commands read): the bot counts a worker it hears from as
        one it can send batches to."""
        self.ready.wait()
        last_scan = time.monotonic()
        while True:
            self.queue_heartbeat()
            if time.monotonic() - last_scan > RESCAN_SECONDS:
                hashed = self.index.scan()
                if hashed:
                    log.info("models folder rescanned: %d new or changed file(s) hashed", hashed)
                last_scan = time.monotonic()
            time.sleep(HEARTBEAT_SECONDS)


class WorkerMetrics:
    """Prometheus metrics of one remote worker (`--metrics-port`)."""

    def __init__(self, worker_id: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self._worker = worker_id
        per_worker = {"labelnames": ["worker"], "registry": self.registry}
        self._busy = Gauge("easel_worker_busy", "1 while a batch runs", **per_worker).labels(worker_id)
        self.broker_up = Gauge("easel_worker_broker_up", "1 while events reach the broker", **per_worker).labels(
            worker_id
        )
        self._batches = Counter("easel_worker_batches", "batches run", **per_worker).labels(worker_id)
        self._images = Counter("easel_worker_images", "pictures made", **per_worker).labels(worker_id)
        self._steps = Counter("easel_worker_steps", "denoising steps run", **per_worker).labels(worker_id)
        self._failures = Counter("easel_worker_batch_failures", "batches that failed", **per_worker).labels(worker_id)
        self.refused = Counter(
            "easel_worker_refused_commands", "command entries refused: not ours, unsigned, wrongly signed or replayed", **per_worker
        ).labels(worker_id)
        self.fetched = Counter(
            "easel_worker_fetched_bytes", "model file bytes fetched by hash (--fetch-missing)", **per_worker
        ).labels(worker_id)
        self._loads = Counter(
            "easel_worker_pipeline_loads",
            "pipelines fetched, by where from (device: already there, cpu: the CPU tier, disk)",
            labelnames=["worker", "tier"],
            registry=self.registry,
        )
        self._last_step: dict[str, int] = {}

    def saw(self, event: object) -> None:
        if isinstance(event, BatchLoading):
            self._busy.set(1)
            self._loads.labels(worker=self._worker, tier=event.cache).inc()
        elif isinstance(event, BatchProgress):
            self._steps.inc(max(0, event.step - self._last_step.get(event.batch_id, 0)))
            self._last_step[event.batch_id] = event.step
        elif isinstance(event, JobDone):
            self._images.inc(len(event.images))
        elif isinstance(event, BatchFailed):
            self._failures.inc()
        elif isinstance(event, BatchFinished):
            self._busy.set(0)
            self._batches.inc()
            self._last_step.pop(event.batch_id, None)


def run_remote(options: RemoteOptions) -> int:
    logging.basicConfig(level=options.log_level, format="%(asctime)s %(levelname)s remote[%(process)d]: %(message)s")
    device = resolve_device(options.device)
    options.worker_id = options.worker_id or f"{socket.gethostname()}-{device.replace(':', '')}-{uuid.uuid4().hex[:6]}"
    index = ModelIndex(options.models_dir)
    started = time.perf_counter()
    hashed = index.scan()
    log.info(
        "models folder %s: %d file(s), %d hashed now, in %.1f s",
        index.root,
        len(index.holds),
        hashed,
        time.perf_counter() - started,
    )
    metrics = WorkerMetrics(options.worker_id) if options.metrics_port is not None else None
    if metrics is not None:
        from prometheus_client import start_http_server

        start_http_server(options.metrics_port, registry=metrics.registry)
    link = BrokerLink(options, index, metrics)
    link.device = device
    threading.Thread(target=link.run_sender, name="events", daemon=True).start()
    threading.Thread(target=link.run_heartbeats, name="heartbeats", daemon=True).start()
    log.info("worker %s on %s serving %s", options.worker_id, device, redacted(options.broker))
    budget = int(options.cache_device_gb * 1e9) if options.cache_device_gb else None
    config = WorkerConfig(device, budget, None, options.log_level, **options.engine)  # type: ignore[arg-type]
    localise = index.localise
    if options.fetch_budget_gb is not None:
        from gpu_worker.model_fetch import Fetcher

        fetcher = Fetcher(
            index,
            int(options.fetch_budget_gb * 1e9),
            link.send,
            on_bytes=metrics.fetched.inc if metrics is not None else lambda n: None,
        )
        localise = fetcher.localise
        log.info("fetches missing files into %s, within %.1f GB", fetcher.folder, options.fetch_budget_gb)
    run_worker(config, link.receive, link.send, localise=localise)
    return 0


def redacted(url: str) -> str:
    """The broker's URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def run_devices(options: RemoteOptions, devices: list[str]) -> int:
    """One worker process per device; SIGTERM/SIGINT stop them all."""
    if len(devices) <= 1:
        options.device = devices[0] if devices else options.device
        return run_remote(options)
    env = {**os.environ, "EASEL_BROKER": options.broker}
    children = []
    for i, device in enumerate(devices):
        argv = [sys.executable, "-m", "gpu_worker", "remote", "--models-dir", str(options.models_dir)]
        argv += ["--devices", device, "--max-pixels", str(options.max_pixels), "--families", ",".join(options.families)]
        argv += ["--log-level", options.log_level, *engine_flags(options.engine)]
        if options.metrics_port is not None:
            argv += ["--metrics-port", str(options.metrics_port + i)]
        if options.cache_device_gb:
            argv += ["--cache-device-gb", str(options.cache_device_gb)]
        if options.key_file is not None:
            argv += ["--key-file", str(options.key_file)]
        if options.fetch_budget_gb is not None:
            argv += ["--fetch-missing", "--fetch-budget-gb", str(options.fetch_budget_gb)]
        children.append(subprocess.Popen(argv, env=env))

    def stop(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return max(child.wait() for child in children)
