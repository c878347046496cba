"""The worker process: one per device, fed batches over a pipe, answering with events.

`serve` is the process entry point. This module imports torch only inside `serve`, so the bot can
name it as a spawn target without loading torch itself. A reader thread takes commands off the
pipe while the main thread generates, so a cancel reaches a running batch between two steps.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from common.protocol import (
    MAX_FRAME_BYTES,
    BadFrame,
    BatchFailed,
    BatchFinished,
    CancelJob,
    RunBatch,
    Shutdown,
    WorkerReady,
    decode,
    encode,
)
from common.worker_config import WorkerConfig

log = logging.getLogger("easel.worker")


WORKER_NICENESS = 10


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda":
        return "cuda:0"
    return device


def serve(conn: Connection, config: WorkerConfig) -> None:
    """The bot's own worker: commands and events as frames on the pipe the bot passed."""

    gone = threading.Event()

    def receive() -> object:
        try:
            return decode(conn.recv_bytes(MAX_FRAME_BYTES))
        except (EOFError, OSError):  # the bot went away: stop the batch in hand, then exit
            went_away()
            return Shutdown()

    def send(event: object) -> None:
        if gone.is_set():  # nobody reads any more
            return
        try:
            conn.send_bytes(encode(event))
        except OSError:  # a broken pipe: the bot went away
            went_away()

    def went_away() -> None:
        if not gone.is_set():
            gone.set()
            log.info("the bot went away: the batch in hand stops at its next step, then this worker")

    run_worker(config, receive, send, gone=gone.is_set)


Receive = Callable[[], object]  # the next command (BadFrame for one that is not); Shutdown to stop
Localise = Callable[[RunBatch], RunBatch]  # a batch's files as this machine has them (LocalFileError if not)


class LocalFileError(Exception):
    """A batch names a file this worker does not hold (by sha256); the message is for the user.
    `unfetched`: the files it was sent tickets for and could not fetch (gpu_worker/model_fetch.py)."""

    def __init__(self, message: str, unfetched: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unfetched = unfetched


def _one_at_a_time(send: Callable[[object], None]) -> Callable[[object], None]:
    """`send`, safe to call from several threads: one frame is written whole before the next."""
    lock = threading.Lock()

    def send_one(message: object) -> None:
        with lock:
            send(message)

    return send_one


def run_worker(
    config: WorkerConfig,
    receive: Receive,
    send: Callable[[object], None],
    *,
    localise: Localise | None = None,
    gone: Callable[[], bool] = lambda: False,
) -> None:
    """Load torch, say WorkerReady, then run batches until Shutdown. A reader thread takes commands
    while the main thread generates, so a cancel reaches a running batch between two steps."""
    send = _one_at_a_time(send)  # the runner sends checked previews from a thread of its own
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The worker is batch work and the bot answers people: when they share CPU cores, the bot's
    # event loop should win (bench/event_loop_stall.py). Idle cores still all go to the worker.
    os.nice(WORKER_NICENESS)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s worker[%(process)d]: %(message)s")
    import torch

    from gpu_worker.cache import PipelineCache
    from gpu_worker.device_memory import default_budgets, memory
    from gpu_worker.loaded import LoadedPipeline
    from gpu_worker.loader import build_pipeline, default_dtype, place, vae_dtype
    from gpu_worker.runner import BatchRunner
    from gpu_worker.speed import speed_up

    device = resolve_device(config.device)
    device_budget, cpu_budget = default_budgets(device)
    budget = config.device_budget_bytes or device_budget

    def placed(loaded: LoadedPipeline) -> None:
        place(loaded, device, budget)
        speed_up(loaded, config, device)

    cache = PipelineCache(
        device,
        budget,
        config.cpu_budget_bytes if config.cpu_budget_bytes is not None else cpu_budget,
        lambda request: build_pipeline(
            request, device, default_dtype(device, request.family, config.precision), vae_dtype(config.vae_precision)
        ),
        placed,
    )
    cancelled: set[str] = set()
    stopping = threading.Event()
    lock = threading.Lock()
    inbox: queue.Queue[RunBatch | Shutdown] = queue.Queue()

    def is_cancelled(job_id: str) -> bool:
        with lock:
            # Nobody waits for any job once the bot is gone, or once it said Shutdown: it ended every
            # job it had (as interrupted) before saying it, so the batch in hand stops at its next step
            # instead of holding the bot's exit for the rest of its steps.
            return job_id in cancelled or stopping.is_set() or gone()

    def read_commands() -> None:
        while True:
            try:
                command = receive()
            except BadFrame as e:
                log.error("ignored a frame that is not a command: %s", e)
                continue
            if isinstance(command, CancelJob):
                with lock:
                    cancelled.add(command.job_id)
            elif isinstance(command, Shutdown):
                stopping.set()
                inbox.put(command)
                return
            elif isinstance(command, RunBatch):
                inbox.put(command)
            else:
                log.error("ignored a %s: not a command", type(command).__name__)

    runner = BatchRunner(device, cache, send, is_cancelled)
    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    dtype = str(default_dtype(device, "sd1", config.precision)).removeprefix("torch.")
    send(WorkerReady(device, os.getpid(), str(torch.__version__), dtype, *memory(device)))
    log.info(
        "worker ready on %s, precision %s, VAE precision %s (cache budget %.1f GB)",
        device,
        config.precision,
        config.vae_precision,
        cache.device_budget / 1e9,
    )
    while not isinstance(command := inbox.get(), Shutdown):
        log.info("batch %s started: %d image(s) of %s", command.batch_id, command.image_count, command.load.name)
        try:
            batch = localise(command) if localise else command
        except LocalFileError as e:
            log.warning("batch %s refused: %s", command.batch_id, e)
            jobs = tuple(job.job_id for job in command.jobs)
            send(BatchFailed(command.batch_id, str(e), jobs, e.unfetched))
            loaded, held_as = tuple(cache.loaded_keys()), tuple(cache.placements())
            send(BatchFinished(command.batch_id, loaded, runner.steps_per_second, *memory(device), held_as))
            continue
        runner.run(batch)
        with lock:
            cancelled.difference_update(job.job_id for job in command.jobs)
        log.info("batch %s finished", command.batch_id)
    log.info("worker on %s shutting down", device)
