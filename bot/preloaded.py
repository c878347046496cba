"""Child processes forked by the worker's preloader (gpu_worker/preload.py) instead of started afresh:
a worker, merge, upscale or embedding process that starts in a fraction of a second, its imports
(torch, diffusers, transformers: seconds of CPU) done once per bot. The bot's side, without torch.

The preloader is started in the background when a second child is asked for (a command that starts
one worker and ends, as the CLI's `generate`, would only pay the imports twice), or by `warm_up()`;
children asked for while it imports start the usual way. A child is started through it only when it is ready and
the environment variables its imports read (CUDA_VISIBLE_DEVICES, HF_HOME, OMP_NUM_THREADS, …) are as
they were when it started; otherwise, or on another system than Linux, or with EASEL_WORKER_PRELOAD=false, the usual way
(bot/child_process.py). A preloaded child is not the bot's own child but the preloader's: its exit
code comes from the preloader, and should the preloader itself die, from watching the child go.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SWITCH = "EASEL_WORKER_PRELOAD"
# Environment variables an operator sets that the preloaded imports read once (devices, allocators,
# threads, the hub's offline switch and caches, the interpreter's paths): a child wanting other values
# than the preloader had is started afresh. Not prefixes: libraries set variables of their own in the
# bot's environment as they load (TORCHINDUCTOR_CACHE_DIR, KMP_*, OpenCV's LD_LIBRARY_PATH), which
# say nothing of a child.
IMPORT_TIME = (
    "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF",
    "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_ENABLE_MPS_FALLBACK", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE",
    "TRANSFORMERS_CACHE", "DIFFUSERS_CACHE", "XDG_CACHE_HOME", "PYTHONPATH", "PYTHONHASHSEED",
)  # fmt: skip
START_TIMEOUT = 30.0  # for the preloader to answer a start; past it, it is taken for broken
MAX_MESSAGE = 1 << 20


def enabled() -> bool:
    return sys.platform == "linux" and os.environ.get(SWITCH, "true").strip().lower() not in ("0", "false", "no", "off")


def _import_environment(environment: dict[str, str]) -> dict[str, str]:
    return {k: environment[k] for k in IMPORT_TIME if k in environment}


class PreloadedProcess:
    """A forked child, with the parts of subprocess.Popen that bot/child_process.py uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done = threading.Event()

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"preloaded child {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class Preloader:
    """One `python -m gpu_worker preload` and the children it forked. Made on a thread that lives as
    long as the bot (the event loop's): the kernel ends the preloader with the thread that started it."""

    def __init__(self) -> None:
        self.environment = _import_environment(dict(os.environ))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gpu_worker", "preload", "--fd", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            cwd=REPO_ROOT,
        )
        theirs.close()
        self._socket = ours
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.broken = False
        self._waiting: dict[int, tuple[threading.Event, list[PreloadedProcess]]] = {}
        self._children: dict[int, PreloadedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._next = 0
        threading.Thread(target=self._read, name="preloader", daemon=True).start()
        log.info("worker preloader starting (pid %s)", self.process.pid)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self.broken

    def wait_ready(self, timeout: float) -> bool:
        """Block until it has imported (or failed); whether it serves."""
        self._ready.wait(timeout)
        return self.ready

    def start(self, argv: list[str], pipe: int | None, streams: tuple[int, int, int] | None = None) -> PreloadedProcess | None:
        """The child forked with `pipe` as its --fd (None: a tool, with no pipe), the bot's streams
        (or `streams`: stdin, stdout, stderr) and environment of now, in the repository's folder;
        None when the preloader cannot start it (start it the usual way)."""
        with self._lock:
            if not self.ready:
                return None
            self._next += 1
            number = self._next
            answered: tuple[threading.Event, list[PreloadedProcess]] = (threading.Event(), [])
            self._waiting[number] = answered
            # As bot/child_process.py starts one: in the repository's folder, with the bot's streams.
            request = {"start": number, "argv": argv, "env": dict(os.environ), "cwd": str(REPO_ROOT), "pipe": pipe is not None}
            given = streams or (0, 1, 2)
            stdio = [fd if _open(fd) else os.open(os.devnull, os.O_RDWR) for fd in given]
            try:
                socket.send_fds(self._socket, [json.dumps(request).encode()], [*([pipe] if pipe is not None else []), *stdio])
            except OSError as e:
                log.warning("worker preloader unreachable (%s); children start afresh", e)
                self.broken = True
                return None
            finally:
                for ours, fd in zip(stdio, given, strict=True):
                    if ours != fd:
                        os.close(ours)
        event, child = answered
        if not event.wait(START_TIMEOUT) or not child:
            log.warning("worker preloader did not start a child in %.0f s; children start afresh", START_TIMEOUT)
            self.broken = True
            self.process.kill()  # so it cannot fork that child late, on the pipe the caller now hands on
            return None
        return child[0]

    def close(self) -> None:
        """Let the preloader go (as the bot's exit does): it ends; children it forked live on."""
        self.broken = True
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)

    def _read(self) -> None:
        while True:
            try:
                data = self._socket.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                break
            try:
                message = json.loads(data)
            except ValueError:
                continue
            self._handle(message)
        self.broken = True
        self._ready.set()
        for event, _ in list(self._waiting.values()):
            event.set()
        threading.Thread(target=self._watch_orphans, name="preloader-orphans", daemon=True).start()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=60)  # reaped, not left a zombie

    def _handle(self, message: dict) -> None:
        if "ready" in message:
            log.info("worker preloader ready (pid %s)", message["ready"])
            self._ready.set()
        elif "refused" in message or "failed" in message:
            why = message.get("refused") or message.get("error")
            log.warning("worker preloader refused to serve: %s; children start afresh", why)
            self.broken = True
            for event, _ in list(self._waiting.values()):  # a start waiting for an answer gets none
                event.set()
        elif "started" in message:
            pid = int(message["pid"])
            child = self._children[pid] = PreloadedProcess(pid)
            if pid in self._early_exits:
                child.exited(self._early_exits.pop(pid))
            event, answer = self._waiting.pop(message["started"], (None, None))
            if event is not None and answer is not None:
                answer.append(child)
                event.set()
        elif "exited" in message:
            pid, code = int(message["exited"]), int(message["code"])
            if pid in self._children:
                self._children.pop(pid).exited(code)
            else:  # before the start was answered (a child that ended at once)
                self._early_exits[pid] = code

    def _watch_orphans(self) -> None:
        """The preloader is gone: its children, if any live on, are followed by their /proc entry (on
        this thread of its own, never the event loop's)."""
        tick = threading.Event()  # never set: a wait of its own that no one else shares
        while self._children:
            for pid, child in list(self._children.items()):
                if not _alive(pid):
                    child.exited(-signal.SIGKILL)  # its real code went with the preloader
                    self._children.pop(pid, None)
            tick.wait(0.2)


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


_preloader: Preloader | None = None
_creating = threading.Lock()
_asked = 0  # children asked for in this process


def warm_up() -> None:
    """Start the preloader now (in the background), so the next children start forked."""
    global _preloader
    if not enabled():
        return
    with _creating:
        if _preloader is None:
            _preloader = Preloader()


def start(argv: list[str], pipe: int | None, streams: tuple[int, int, int] | None = None) -> PreloadedProcess | None:
    """`python -m gpu_worker ARGV --fd PIPE` (a tool: no pipe, its own `streams`) forked by the
    preloader, or None: start it the usual way (the preloader is off, still importing, broken, or
    imported under other environment variables)."""
    global _asked
    if not enabled():
        return None
    _asked += 1
    if _asked > 1:
        warm_up()
    preloader = _preloader
    if preloader is None or not preloader.ready:
        return None
    if _import_environment(dict(os.environ)) != preloader.environment:
        return None
    return preloader.start(argv, pipe, streams)
