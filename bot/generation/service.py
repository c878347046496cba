"""The generation service: fair queue, batching, worker supervision, job records, event streams.

Jobs come in through bot/jobs.py `Jobs.start` — the one door, after every rule of the place — as
`admit` / `admit_group`; front ends read the returned handles' events. Nothing here
idles in a background task: work moves when a job is submitted or a worker reports, so the bot's
event loop only ever does short bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from bot.generation.jobs import (
    TERMINAL,
    Cancelled,
    Failed,
    Finished,
    Job,
    JobEvent,
    JobState,
    Loading,
    Preview,
    Progress,
    Queued,
    Started,
    new_job_id,
)
from bot.generation.metrics import ServiceMetrics
from bot.generation.model_share import ModelShare, ShareOptions, file_size
from bot.generation.queue import FairQueue
from bot.generation.remote import (
    LEASE_SECONDS,
    LOST_BATCH_SECONDS,
    BrokerClient,
    BrokerUnavailable,
    RemoteWorker,
)
from bot.generation.store import JobRecord, JobStore
from bot.generation.workers import WorkerProcess
from bot.rules.cooldowns import Cooldowns
from bot.rules.limits import GenerationError, Limits, ValidRequest
from common.errors import EaselError
from common.protocol import (
    BatchFailed,
    BatchFinished,
    BatchLoading,
    BatchProgress,
    CancelJob,
    FetchTicket,
    JobCancelled,
    JobDone,
    JobPart,
    JobPreview,
    RunBatch,
    WorkerHeartbeat,
    WorkerReady,
)
from common.worker_config import WorkerConfig

log = logging.getLogger(__name__)

# Waiting jobs' places, read by their front ends (JobHandle.next_event): at most every 1.5 s each
# (a Discord message's edit rate), and 25 edits a second over the whole queue (half Discord's global
# 50 requests a second: the rest is for results and progress).
PLACE_POLL_SECONDS = 1.5
PLACE_EDITS_PER_SECOND = 25
CRASH_LOOP_LIMIT = 3  # deaths before a worker ever became ready: stop restarting that slot
MAX_ATTEMPTS = 2  # a job whose worker was lost this many times fails instead of going back in the queue
LEASE_CHECK_SECONDS = 0.5

Worker = WorkerProcess | RemoteWorker


class JobHandle:
    """A front end's view of one job: its record so far and a stream of events until it ends.

    Its place in the queue is not pushed at every change (a dispatch moves every waiting job: n
    announcements, each an edit of a Discord message): the handle reads it when its front end asks,
    at the pace the front end can show it (`next_event`'s `poll`), and says it when it moved."""

    def __init__(self, job: Job, place: Callable[[str], Queued | None] | None = None) -> None:
        self.job = job
        self._events: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._done = asyncio.Event()
        self._place = place
        self.last_position: int | None = None
        self._told_wait = False  # its expected wait has been said (the first place is said without one)

    def emit(self, event: JobEvent) -> None:
        if isinstance(event, Queued):
            self.last_position, self._told_wait = event.position, event.eta_seconds is not None
        self._events.put_nowait(event)
        if isinstance(event, TERMINAL):
            self._done.set()

    async def events(self, poll: float | None = None) -> AsyncIterator[JobEvent]:
        while True:
            event = await self.next_event(poll)
            yield event
            if isinstance(event, TERMINAL):
                return

    async def next_event(self, poll: float | None = None) -> JobEvent:
        """The next event; while the job waits, every `poll` seconds (None: never) its place is
        read, and said (Queued) when it moved."""
        while poll is not None and self._place is not None and self._events.empty() and self.job.state is JobState.QUEUED:
            try:
                async with asyncio.timeout(poll):  # a timer on this task, no task of its own
                    return await self._events.get()
            except TimeoutError:
                now = self._place(self.job.id)
                if now is not None and (now.position != self.last_position or (now.eta_seconds is not None and not self._told_wait)):
                    self.last_position, self._told_wait = now.position, now.eta_seconds is not None
                    return now
        return await self._events.get()

    def queued(self) -> Queued | None:
        """Where the job waits now (None: it does not)."""
        return self._place(self.job.id) if self._place is not None else None

    async def wait(self) -> Job:
        await self._done.wait()
        return self.job


def loaded_names(keys: tuple[str, ...], held_as: tuple[str, ...], names: dict[str, str]) -> list[str]:
    """The checkpoints a worker holds, by name, each with its placement when not whole."""
    out = []
    for number, key in enumerate(keys):
        placement = held_as[number] if number < len(held_as) else "whole"
        name = names.get(key.split("+")[0], key[:10])
        out.append(name if placement == "whole" else f"{name} ({placement})")
    return out


@dataclass
class WorkerStatus:
    slot: int
    device: str
    state: str  # starting | idle | busy | stopped
    pid: int | None
    loaded: list[str]
    steps_per_second: float
    speed_measured_on: str = ""  # what the speed was measured on: "64×64", "1024×1024, 4 pictures"
    machine: str = ""  # a remote worker's host; "" for the bot's own
    worker_id: str = ""  # a remote worker's id
    memory_total: int = 0  # bytes of its device, as its last word (heartbeat, batch end) said
    memory_free: int = 0
    jobs: list[str] = field(default_factory=list)  # what it is running now
    heartbeat_age: float | None = None  # seconds since its last heartbeat (remote workers)
    fetches: bool = False  # a remote worker started with --fetch-missing


@dataclass
class ServiceStatus:
    workers: list[WorkerStatus]
    queued: int
    running: int
    seconds_per_unit: float | None  # one step of one 512x512 image, measured
    recent: dict[str, float] = field(default_factory=dict)
    broker: str = ""  # with remote workers: the broker's state ("connected since …", "unreachable since …")


class GenerationService:
    def __init__(
        self,
        db: aiosqlite.Connection,
        workers: list[WorkerConfig],
        limits: Limits | None = None,
        *,
        preview_every: int = 5,
        preview_seconds: float = 0.0,
        restart_delay: float = 0.5,
        broker_url: str | None = None,
        worker_keys: dict[str, tuple[bytes, ...]] | None = None,
        share: ShareOptions | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.preview_every, self.preview_seconds = preview_every, preview_seconds
        self.restart_delay = restart_delay
        self.store = JobStore(db)
        self._queue = FairQueue(self.limits)
        self.cooldowns = Cooldowns(self.limits.cooldown_seconds)
        self._workers: list[Worker] = [
            WorkerProcess(i, c, self._on_event, self._on_exit) for i, c in enumerate(workers)
        ]
        self._local = len(self._workers)
        self._next_slot = len(self._workers)
        self._remote: dict[str, RemoteWorker] = {}
        self.metrics = ServiceMetrics(self.status)
        self._broker = (
            BrokerClient(
                broker_url, self._on_heartbeat, self._on_remote_event, on_refused=self.metrics.refused.inc, keys=worker_keys
            )
            if broker_url
            else None
        )
        # Remote workers started with --fetch-missing fetch what they lack from here (bot/generation/model_share.py).
        self._share = (
            ModelShare(share, on_served=self.metrics.shared_bytes.inc, on_refused=self.metrics.share_refused.inc)
            if share is not None and share.enabled and broker_url
            else None
        )
        self._lease_task: asyncio.Task[None] | None = None
        self._steps_seen: dict[str, int] = {}  # batch id -> steps counted in the metrics so far
        self._handles: dict[str, JobHandle] = {}  # jobs not yet finished
        self._batches: dict[str, list[Job]] = {}
        self._names: dict[str, str] = {}  # checkpoint sha256 -> name, for status
        self._early_deaths: dict[int, int] = {}
        self._stopped: set[int] = set()  # slots given up on after a crash loop
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seconds_per_unit: float | None = None
        # Every waiting job's place and expected wait, made when first asked after the queue changed
        # (one walk of the fair order, shared by every asker until the next change), and the queue's
        # version it was made at.
        self._places: dict[str, Queued] = {}
        self._places_at = -1
        self._closing = False
        self._changed: asyncio.Event | None = None
        self._admission = asyncio.Lock()

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self, *, wait: bool = True, ready_within: float = 300.0) -> None:
        interrupted = await self.store.mark_interrupted()
        if interrupted:
            log.info("%d job(s) from the previous run marked interrupted", interrupted)
        self._changed = asyncio.Event()
        for worker in self._local_workers():
            worker.start()
        if self._share is not None:
            await self._share.start()
        if self._broker is not None:
            await self._broker.start()
            self._lease_task = asyncio.get_running_loop().create_task(self._watch_leases(), name="worker leases")
        if wait:
            try:
                await asyncio.wait_for(self._until_settled(), ready_within)
            except TimeoutError:
                if not self._local and self._broker is not None:
                    raise GenerationError(
                        f"no remote worker joined within {ready_within:.0f} s (the broker is "
                        f"{self._broker.state.describe()}); start one with `python -m gpu_worker remote`"
                    ) from None
                raise GenerationError(
                    f"the GPU worker did not start within {ready_within:.0f} s; see the log"
                ) from None
            if not any(w.ready for w in self._workers):
                raise GenerationError("no GPU worker could start; see the log for the reason")

    async def _watch_leases(self) -> None:
        """The one loop the broker needs: remote workers unheard for a lease are presumed gone."""
        while not self._closing:
            await asyncio.sleep(LEASE_CHECK_SECONDS)
            now = time.monotonic()
            for worker in list(self._remote.values()):
                silent = now - worker.last_seen
                if silent > LEASE_SECONDS:
                    self._lose(
                        worker, f"the GPU worker {worker.name} stopped answering (no heartbeat for {silent:.0f} s)"
                    )

    async def _until_settled(self) -> None:
        """Every local worker ready (or given up on); with only remote workers, the first of them."""
        assert self._changed is not None
        while not (
            all(w.ready or w.slot in self._stopped for w in self._local_workers()) and (self._local or self._remote)
        ):
            self._changed.clear()
            await self._changed.wait()

    def _local_workers(self) -> list[WorkerProcess]:
        return [w for w in self._workers if isinstance(w, WorkerProcess)]

    async def close(self) -> None:
        """Stop the workers; queued and running jobs end as interrupted, with a message."""
        self._closing = True
        for handle in list(self._handles.values()):
            self._queue.remove(handle.job.id)
            self._finish(handle.job, JobState.INTERRUPTED, "the bot is shutting down; this job did not finish")
        await asyncio.gather(*(w.stop() for w in self._workers))
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)
        if self._broker is not None:
            await self._broker.close()
        if self._share is not None:
            await self._share.close()
        await self.flush()

    async def flush(self) -> None:
        """Wait for pending job-record writes, and try once more those the database refused."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
        await self.store.write_unsaved()
        await self.store.write_notes()

    # --- front-end API -------------------------------------------------------------------------

    async def admit_group(self, specs: list[ValidRequest]) -> list[JobHandle]:
        """Jobs asked for together (a comparison): refused as a whole before any is queued, one cooldown."""
        if not specs:
            return []
        user = specs[0].request.requester_id
        # Admission is checked and recorded under one lock: recording a job awaits the database, and
        # five concurrent requests from one user must not all pass a check made before that await.
        async with self._admission:
            self._check_running()
            free = self.limits.max_queued_per_user - self._queue.queued_for(user)
            if len(specs) > free:
                raise GenerationError(
                    f"this needs {len(specs)} places in the queue and you have {max(0, free)} free "
                    f"(the limit is {self.limits.max_queued_per_user}); wait for your jobs to start"
                )
            if len(self._queue) + len(specs) > self.limits.max_queue:
                raise GenerationError(f"the queue is full ({self.limits.max_queue} jobs); try again in a few minutes")
            self.cooldowns.check(user)
            handles = [await self._enqueue(spec) for spec in specs]
            self.cooldowns.record(user)
        self._pump()
        for handle in handles:
            self._tell_place(handle)
        return handles

    async def admit(self, spec: ValidRequest) -> JobHandle:
        """Queue one validated job, if the queue, the worker and the requester's cooldown allow it."""
        user = spec.request.requester_id
        async with self._admission:  # see admit_group
            self._check_running()
            self._queue.check_room(user)
            self.cooldowns.check(user)
            handle = await self._enqueue(spec)
            self.cooldowns.record(user)
        self._pump()
        self._tell_place(handle)
        return handle

    def _tell_place(self, handle: JobHandle) -> None:
        """A job that waits hears its place once, from the queue lengths (no walk of the order); later
        places and its expected wait when its front end asks (JobHandle.next_event's poll)."""
        position = self._queue.position(handle.job.id)
        if position is not None:
            handle.emit(Queued(handle.job.id, position, None))

    def _check_running(self) -> None:
        if self._closing:
            raise GenerationError("the bot is shutting down; try again in a minute")
        if self._broker is None and len(self._stopped) == self._local:
            raise GenerationError("no GPU worker is running, so nothing can be generated; tell the bot's owner")

    async def _enqueue(self, spec: ValidRequest) -> JobHandle:
        job = Job(new_job_id(), spec)
        try:
            await self.store.insert(job)  # recorded before it can run, so every later update has a row
        except sqlite3.Error:
            log.exception("job %s could not be recorded", job.id)
            raise GenerationError(
                "the job could not be recorded (the bot's database failed); tell the bot's owner"
            ) from None
        self._queue.push(job)  # cannot fail: room was checked under the admission lock
        handle = self._handles[job.id] = JobHandle(job, self.queued)
        self._names[spec.checkpoint.sha256] = spec.checkpoint.name
        log.info(
            "job %s queued: %s, %dx%d, %d step(s), %d image(s), by %s",
            job.id,
            spec.checkpoint.name,
            spec.width,
            spec.height,
            spec.parameters.steps,
            job.image_count,
            job.requester_id,
        )
        return handle

    async def cancel(self, job_id: str, requester_id: str | None = None) -> str:
        """Cancel a queued job at once, or a running one between two steps. `requester_id` None = moderator."""
        handle = self._handles.get(job_id)
        if handle is None:
            record = await self.store.get(job_id)
            if record is None:
                raise GenerationError(f"there is no job {job_id}")
            raise GenerationError(f"job {job_id} has already ended ({record.state.value})")
        job = handle.job
        if requester_id is not None and job.requester_id != requester_id:
            raise GenerationError(f"only the person who asked for job {job_id} (or a moderator) can cancel it")
        if job.state is JobState.QUEUED:
            self._queue.remove(job_id)
            self._finish(job, JobState.CANCELLED, None)
            return "cancelled"
        for worker in self._workers:
            if worker.batch and any(part.job_id == job_id for part in worker.batch.jobs):
                worker.send(CancelJob(job_id))
        log.info("job %s cancel requested while running", job_id)
        return "cancelling"

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self.store.get(job_id)

    def status(self) -> ServiceStatus:
        workers = []
        now = time.monotonic()
        for w in self._workers:
            state = (
                "stopped" if w.slot in self._stopped else "starting" if not w.ready else "idle" if w.idle else "busy"
            )
            remote = w if isinstance(w, RemoteWorker) else None
            workers.append(
                WorkerStatus(
                    w.slot,
                    w.device,
                    state,
                    w.pid,
                    loaded_names(w.loaded, w.held_as, self._names),
                    w.steps_per_second,
                    w.speed_measured_on,
                    machine=remote.machine if remote else "",
                    worker_id=remote.worker_id if remote else "",
                    memory_total=w.memory_total,
                    memory_free=w.memory_free,
                    jobs=[part.job_id for part in w.batch.jobs] if w.batch else [],
                    heartbeat_age=now - remote.last_seen if remote else None,
                    fetches=bool(remote and remote.fetches),
                )
            )
        running = sum(1 for h in self._handles.values() if h.job.state is JobState.RUNNING)
        broker = self._broker.state.describe() if self._broker else ""
        if self._broker is not None and not self._remote:
            broker += "; no remote worker has been heard from" + (", so jobs wait" if not self._local else "")
        if self._share is not None and self._share.url:
            broker += f"; model files shared at {self._share.url}"
        return ServiceStatus(workers, len(self._queue), running, self._seconds_per_unit, broker=broker)

    def position(self, job_id: str) -> int | None:
        return self._queue.position(job_id)

    def place_poll(self) -> float:
        """How often a waiting job's front end should read its place: each waiting Discord message is
        edited when its place moved, and all of them together stay within PLACE_EDITS_PER_SECOND."""
        return max(PLACE_POLL_SECONDS, len(self._queue) / PLACE_EDITS_PER_SECOND)

    def queued(self, job_id: str) -> Queued | None:
        """A waiting job's place and expected wait, from the shared table (made again only after the
        queue changed); None when it is not waiting."""
        if job_id not in self._queue:
            return None
        if self._places_at != self._queue.version:
            self._places, self._places_at = self._make_places(), self._queue.version
        return self._places.get(job_id)

    def guild_jobs(self, guild_id: str) -> list[Job]:
        """This guild's unfinished jobs: running first, then queued in dispatch order."""
        running = [h.job for h in self._handles.values() if h.job.state is JobState.RUNNING]
        ordered = running + self._queue.order()
        return [job for job in ordered if job.spec.request.guild_id == guild_id]

    # --- dispatch ------------------------------------------------------------------------------

    def _pump(self) -> None:
        while not self._closing:
            idle = [w for w in self._workers if w.idle]
            head = self._queue.peek()
            if not idle or head is None:
                break
            worker = self._choose(idle, head.spec)
            if worker is None:
                if self._no_worker_can_run(head):
                    continue
                # Only a busy worker can run the head (the one holding its files): it keeps its place
                # and waits for that one, and the idle workers take the first job behind it they can
                # run. None of them could run the head, so this never delays it; the rotation between
                # users stays: the served job's user goes to the back, the head's keeps its turn.
                head = next((j for j in self._queue.order()[1:] if self._choose(idle, j.spec) is not None), None)
                if head is None:
                    break
                worker = self._choose(idle, head.spec)
                assert worker is not None
            jobs = self._queue.pop_batch(self.limits.max_batch_images, head.id)
            # Jobs batched with the head may name files (embeddings) this worker lacks: they wait.
            kept = [j for j in jobs if self._runs(worker, j.spec)]
            for job in reversed([j for j in jobs if j not in kept]):
                self._queue.push_front(job)
            self._dispatch(worker, kept)

    def _choose(self, idle: list[Worker], spec: ValidRequest) -> Worker | None:
        """Which idle worker runs a job — the whole rule: one that holds every file the job reads
        (one with its checkpoint loaded first, else the one with least loaded); only when no idle
        worker holds them, one that fetches what it lacks (the fewest bytes to fetch first). A holder
        that is busy is not waited for while a fetcher is idle: the fetched file stays on that worker,
        so the pool's holders of a popular file grow with demand."""
        holders = [w for w in idle if w.can_run(spec) is None]
        if holders:
            key = spec.checkpoint.sha256
            return next((w for w in holders if key in w.loaded), None) or min(holders, key=lambda w: len(w.loaded))
        fetchers = [(w, size) for w in idle if (size := self._fetch_size(w, spec)) is not None]
        return min(fetchers, key=lambda pair: pair[1])[0] if fetchers else None

    def _runs(self, worker: Worker, spec: ValidRequest) -> bool:
        return worker.can_run(spec) is None or self._fetch_size(worker, spec) is not None

    def _fetch_size(self, worker: Worker, spec: ValidRequest) -> int | None:
        """The bytes `worker` would fetch to run the job, or None when it cannot (not a fetching
        remote worker, a family or size it does not take, nothing the bot can share)."""
        if self._share is None or not isinstance(worker, RemoteWorker) or not worker.fetches:
            return None
        if worker.can_take(spec) is not None or worker.fetch_refusal(spec) is not None:
            return None
        total = 0
        for file in worker.lacks(spec):
            size = file_size(file.path) if file.sha256 else -1
            if size < 0:
                return None
            total += size
        return total

    def _no_worker_can_run(self, head: Job) -> bool:
        """Fail the head job when no running worker can run it (and say why); False while some
        worker could, or none is up yet (then it waits)."""
        up = [w for w in self._workers if w.ready]
        reasons = [(isinstance(w, RemoteWorker) and w.fetch_refusal(head.spec)) or w.can_run(head.spec) for w in up]
        if not up or any(r is None for r in reasons) or any(self._fetch_size(w, head.spec) is not None for w in up):
            return False
        self._queue.remove(head.id)
        self._finish(
            head,
            JobState.FAILED,
            "no GPU worker can run this job: " + "; ".join(dict.fromkeys(r for r in reasons if r))[:1500],
            reason="no_capable_worker",
        )
        return True

    def _dispatch(self, worker: Worker, jobs: list[Job]) -> None:
        spec = jobs[0].spec
        batch = RunBatch(
            batch_id=new_job_id(),
            load=spec.checkpoint.load_request(),
            jobs=tuple(
                JobPart(
                    j.id,
                    j.spec.parameters.prompt,
                    j.spec.parameters.negative,
                    j.spec.seeds,
                    j.spec.subseeds,
                    j.spec.prompts,
                    j.spec.negatives,
                )
                for j in jobs
            ),
            parameters=spec.parameters,
            model_name=spec.checkpoint.file_stem,
            preview_every=self.preview_every,
            preview_seconds=self.preview_seconds,
            loras=spec.loras,
            # Embeddings are words: each prompt uses only its own, so the batch carries all of its jobs'.
            embeddings=tuple(dict.fromkeys(use for job in jobs for use in job.spec.embeddings)),
            init_png=spec.init_png,
            mask_png=spec.mask_png,
            edit_pngs=spec.edit_pngs,
            controlnets=spec.controlnets,
            control_pngs=spec.control_pngs,
            detectors=spec.detectors,
            hires_model=spec.hires_model,
            vae=spec.vae,
            fetch=self._tickets(worker, jobs),
        )
        worker.batch = batch
        worker.dispatched_at = time.monotonic()
        self._batches[batch.batch_id] = jobs
        now = time.time()
        for job in jobs:
            self.metrics.wait_seconds.observe(max(0.0, now - job.created_at))
            job.state, job.started_at, job.device, job.batch_size = (
                JobState.RUNNING,
                now,
                worker.label,
                batch.image_count,
            )
            self._handles[job.id].emit(Started(job.id, batch.image_count))
            self._save(job)
            log.info(
                "job %s running on worker %d (%s), batch %s of %d image(s)",
                job.id,
                worker.slot,
                worker.name,
                batch.batch_id,
                batch.image_count,
            )
        worker.send(batch)

    def _tickets(self, worker: Worker, jobs: list[Job]) -> tuple[FetchTicket, ...]:
        """Where a fetching worker gets each file of the batch it lacks."""
        if self._share is None or not isinstance(worker, RemoteWorker) or not worker.fetches:
            return ()
        lacking = {f.sha256: f for job in jobs for f in worker.lacks(job.spec)}
        if not lacking:
            return ()
        try:
            tickets = self._share.tickets(worker.worker_id, list(lacking.values()))
        except EaselError as e:  # the file went since it was chosen: the worker refuses, naming it
            log.warning("worker %s cannot fetch: %s", worker.worker_id, e)
            return ()
        log.info("worker %s fetches %s", worker.worker_id, ", ".join(t.name for t in tickets))
        return tickets

    def _make_places(self) -> dict[str, Queued]:
        """Every waiting job's place, and its wait: what runs now and every job ahead of it, shared
        among the ready workers, then its own run."""
        places = {}
        ahead = self._running_seconds()
        workers = max(1, sum(1 for w in self._workers if w.ready))
        for position, job in enumerate(self._queue.order(), start=1):
            own = self._estimate(job)
            eta = None if ahead is None or own is None else ahead / workers + own
            places[job.id] = Queued(job.id, position, eta)
            if ahead is not None and own is not None:
                ahead += own
        return places

    def _estimate(self, job: Job) -> float | None:
        return None if self._seconds_per_unit is None else job.work_units * self._seconds_per_unit

    def _running_seconds(self) -> float | None:
        if self._seconds_per_unit is None:
            return None
        total = 0.0
        for jobs in self._batches.values():
            total += sum(self._estimate(j) or 0.0 for j in jobs)
        return total

    # --- worker events -------------------------------------------------------------------------

    def _on_heartbeat(self, heartbeat: WorkerHeartbeat) -> None:
        worker = self._remote.get(heartbeat.worker_id)
        if worker is None:
            worker = RemoteWorker(self._next_slot, heartbeat, self._send_remote)
            self._next_slot += 1
            self._remote[worker.worker_id] = worker
            self._workers.append(worker)
            log.info(
                "remote worker %s joined as worker %d: %s, %d file(s) held, families %s",
                worker.worker_id,
                worker.slot,
                worker.name,
                len(worker.holds),
                ",".join(heartbeat.families),
            )
            self._signal()
        else:
            worker.update(heartbeat)
        batch = worker.batch
        assert self._broker is not None
        reconnected = self._broker.connected_at
        if (
            batch is not None
            and batch.batch_id not in heartbeat.batches
            and worker.dispatched_at < reconnected < time.monotonic() - LOST_BATCH_SECONDS
        ):
            # Sent before the broker went away and came back, and not among what the worker has: the
            # broker lost it (a restart without its data), or lost the worker's word that it ended.
            # Heartbeats follow a worker's events on one stream, so had it ended, the service would know.
            worker.batch = None
            self._requeue(batch, f"the broker lost the batch sent to the GPU worker {worker.name}")
        self._pump()

    def _on_remote_event(self, sender: str, event: object) -> None:
        worker = self._remote.get(sender)
        if worker is None:  # a worker presumed gone, or a message not from any worker: its work is void
            log.info("discarded a %s from %s, not a worker of this bot now", type(event).__name__, sender[:60])
            return
        self._on_event(worker, event)

    def _send_remote(self, worker: RemoteWorker, command: object) -> None:
        assert self._broker is not None
        broker, previous = self._broker, worker.sending

        async def send_after_previous() -> None:
            if previous is not None:  # commands to one worker keep their order: a cancel never overtakes its batch
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await broker.send(worker.worker_id, command)
            except BrokerUnavailable as e:
                if isinstance(command, RunBatch) and worker.batch is command:
                    worker.batch = None
                    self._requeue(command, f"the batch could not be sent to {worker.name} ({e})")
                    self._pump()
                else:
                    log.warning("a %s for worker %s was not sent: %s", type(command).__name__, worker.worker_id, e)

        worker.sending = asyncio.get_running_loop().create_task(send_after_previous())
        self._tasks.add(worker.sending)
        worker.sending.add_done_callback(self._tasks.discard)

    def _lose(self, worker: RemoteWorker, reason: str) -> None:
        """A remote worker presumed gone: forgotten (anything it sends later is discarded), its batch
        back in the queue."""
        log.error("%s; its jobs go back in the queue", reason)
        self._remote.pop(worker.worker_id, None)
        self._workers.remove(worker)
        if self._broker is not None:
            self._spawn(self._broker.forget(worker.worker_id))
        batch, worker.batch = worker.batch, None
        if batch is not None:
            self._requeue(batch, reason)
        self._signal()
        self._pump()

    def _requeue(self, batch: RunBatch, reason: str) -> None:
        """A batch's unfinished jobs to the head of the queue for another worker; a job that was lost
        MAX_ATTEMPTS times fails instead, saying why."""
        jobs = self._live(batch.batch_id)
        self._batches.pop(batch.batch_id, None)
        for job in reversed(jobs):
            job.attempts += 1
            if job.attempts >= MAX_ATTEMPTS:
                self._finish(
                    job,
                    JobState.FAILED,
                    f"{reason} while running job {job.id}; it was tried {job.attempts} times",
                    reason="worker_lost",
                )
                continue
            job.state, job.started_at, job.device, job.batch_size = JobState.QUEUED, None, None, None
            self._queue.push_front(job)
            self._tell_place(self._handles[job.id])
            self._save(job)
            log.info("job %s queued again: %s", job.id, reason)

    def _on_event(self, worker: Worker, event: object) -> None:
        batch_id = getattr(event, "batch_id", None)
        if batch_id is not None and (worker.batch is None or worker.batch.batch_id != batch_id):
            # Not the batch this worker runs for the service: a late word about a batch taken back,
            # or a forged one. A job ends once.
            log.info(
                "discarded a %s for batch %s from worker %d", type(event).__name__, str(batch_id)[:40], worker.slot
            )
            return
        if isinstance(event, WorkerReady):
            log.info(
                "worker %d ready on %s (pid %d, torch %s, %s)",
                worker.slot,
                event.device,
                event.pid,
                event.torch_version,
                event.dtype,
            )
            self._early_deaths[worker.slot] = 0
            worker.memory_total, worker.memory_free = event.memory_total, event.memory_free
            self._signal()
            self._pump()
        elif isinstance(event, BatchLoading):
            self.metrics.loads.labels(event.cache).inc()
            for job in self._live(event.batch_id):
                self._handles[job.id].emit(Loading(job.id, event.checkpoint, event.cache))
        elif isinstance(event, BatchProgress):
            self._on_progress(worker, event)
        elif isinstance(event, JobPreview):
            if event.job_id in self._handles:
                self._handles[event.job_id].emit(Preview(event.job_id, event.step, event.png, event.nsfw_score))
        elif isinstance(event, JobDone):
            job = self._job(event.batch_id, event.job_id)
            if job is not None:
                job.images, job.maps, job.said, job.device = event.images, event.maps, event.notes, worker.label
                self.metrics.images.inc(len(event.images))
                job.load_seconds, job.inference_seconds = event.load_seconds, event.inference_seconds
                self._finish(job, JobState.DONE, None)
        elif isinstance(event, JobCancelled):
            job = self._job(event.batch_id, event.job_id)
            if job is not None:
                self._finish(job, JobState.CANCELLED, None)
        elif isinstance(event, BatchFailed) and event.unfetched and isinstance(worker, RemoteWorker) and worker.batch:
            # A fetch that failed (its budget, its link, bytes that did not match): the jobs go back to
            # the head of the queue for a holder, and this worker is not sent those files again.
            worker.cannot_fetch |= dict.fromkeys(event.unfetched, event.message)
            self._requeue(worker.batch, f"the GPU worker {worker.name} could not fetch a file ({event.message})")
        elif isinstance(event, BatchFailed):
            for job in self._live(event.batch_id):
                if job.id in event.job_ids or not event.job_ids:
                    self._finish(job, JobState.FAILED, event.message, reason="worker_error")
        elif isinstance(event, BatchFinished):
            for job in self._live(event.batch_id):
                self._finish(
                    job,
                    JobState.FAILED,
                    "the worker finished the batch without returning this job",
                    reason="worker_error",
                )
            self._batches.pop(event.batch_id, None)
            self._steps_seen.pop(event.batch_id, None)
            worker.batch = None
            worker.loaded, worker.held_as = event.loaded, event.held_as
            if event.memory_total:
                worker.memory_total, worker.memory_free = event.memory_total, event.memory_free
            if isinstance(worker, RemoteWorker):
                worker.finished(event.batch_id)
            self._pump()

    def _on_progress(self, worker: Worker, event: BatchProgress) -> None:
        jobs = self._live(event.batch_id)
        self.metrics.steps.inc(max(0, event.step - self._steps_seen.get(event.batch_id, 0)))
        self._steps_seen[event.batch_id] = event.step
        worker.steps_per_second = event.it_per_s
        if jobs:
            pictures = sum(j.spec.parameters.count for j in jobs)
            size = f"{jobs[0].spec.width}×{jobs[0].spec.height}"
            worker.speed_measured_on = size + (f", {pictures} pictures" if pictures > 1 else "")
        if event.it_per_s > 0 and jobs:
            units_per_step = sum(j.work_units / j.spec.denoising_steps for j in jobs)
            measured = 1.0 / event.it_per_s / units_per_step
            previous = self._seconds_per_unit
            self._seconds_per_unit = measured if previous is None else 0.7 * previous + 0.3 * measured
        eta = (event.total - event.step) / event.it_per_s if event.it_per_s > 0 else None
        for job in jobs:
            self._handles[job.id].emit(Progress(job.id, event.step, event.total, event.it_per_s, eta))

    def _on_exit(self, worker: WorkerProcess, exitcode: int | None) -> None:
        was_ready = worker.ready
        worker.ready, worker.loaded = False, ()
        batch, worker.batch = worker.batch, None
        if self._closing:
            return
        log.error("worker %d on %s exited unexpectedly (exit code %s)", worker.slot, worker.device, exitcode)
        if batch is not None:
            for job in self._live(batch.batch_id):
                self._finish(
                    job,
                    JobState.FAILED,
                    f"the GPU worker stopped unexpectedly (exit code {exitcode}) while running job {job.id}; "
                    "it has been restarted, so please try again",
                    reason="worker_crashed",
                )
            self._batches.pop(batch.batch_id, None)
        if not was_ready:
            self._early_deaths[worker.slot] = self._early_deaths.get(worker.slot, 0) + 1
        if self._early_deaths.get(worker.slot, 0) >= CRASH_LOOP_LIMIT:
            log.error("worker %d died %d times before becoming ready; not restarting it", worker.slot, CRASH_LOOP_LIMIT)
            self._stopped.add(worker.slot)
            self._signal()
            if len(self._stopped) == self._local and self._broker is None:  # with a broker, jobs wait for remote ones
                for handle in list(self._handles.values()):
                    self._queue.remove(handle.job.id)
                    self._finish(
                        handle.job,
                        JobState.FAILED,
                        "no GPU worker could start; tell the bot's owner",
                        reason="worker_crashed",
                    )
            return
        asyncio.get_running_loop().call_later(self.restart_delay, self._restart, worker)

    def _restart(self, worker: WorkerProcess) -> None:
        if not self._closing:
            worker.generation += 1
            worker.start()

    # --- helpers -------------------------------------------------------------------------------

    def _signal(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _live(self, batch_id: str) -> list[Job]:
        return [j for j in self._batches.get(batch_id, []) if not j.state.finished]

    def _job(self, batch_id: str, job_id: str) -> Job | None:
        return next((j for j in self._live(batch_id) if j.id == job_id), None)

    def _finish(
        self, job: Job, state: JobState, error: str | None, *, notify: bool = True, reason: str = "shutdown"
    ) -> None:
        """`reason`: why a failed or interrupted job did not finish (metrics.FAILURE_REASONS)."""
        job.state, job.error, job.finished_at = state, error, time.time()
        self.metrics.finished.labels(state.value).inc()
        if state in (JobState.FAILED, JobState.INTERRUPTED):
            self.metrics.failures.labels(reason).inc()
        if job.started_at is not None:
            self.metrics.run_seconds.observe(max(0.0, job.finished_at - job.started_at))
        handle = self._handles.pop(job.id, None)
        if handle is not None and notify:
            if state is JobState.DONE:
                handle.emit(Finished(job))
            elif state is JobState.CANCELLED:
                handle.emit(Cancelled(job.id))
            else:
                handle.emit(Failed(job.id, f"{error} (job {job.id})"))
        self._save(job)
        if state is JobState.DONE:
            log.info(
                "job %s done: %d image(s), %.2f s inference, %.2f s load",
                job.id,
                len(job.images),
                job.inference_seconds or 0,
                job.load_seconds or 0,
            )
        else:
            log.info("job %s %s%s", job.id, state.value, f": {error}" if error else "")

    def _save(self, job: Job) -> None:
        self._spawn(self.store.save_state(job))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
