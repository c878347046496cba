"""`python -m gpu_worker preload --fd N`: a process that has imported what a worker needs (torch,
diffusers, transformers, the picture check) and starts each child process the bot asks for by forking,
so a worker (or a merge, an upscale, the embedding model) starts in a fraction of a second instead of
paying those imports again: after a crash, an out-of-memory error, or on every device at once.

The bot's side is bot/preloaded.py. On the socket (SEQPACKET, one JSON message each way, never a
pickle): `{"start": ID, "argv": [...], "env": {...}, "cwd": ...}` with the child's pipe and its stdin,
stdout and stderr attached (SCM_RIGHTS); answered `{"started": ID, "pid": PID}`, and later
`{"exited": PID, "code": CODE}` (a negative code: killed by that signal, as subprocess reports it).
The child takes the bot's environment and standard streams of the moment it is asked for, and the
folder the bot names (the repository's), as a process the bot started itself would; it runs `python -m gpu_worker ARGV --fd N` as a fresh
process would, and exits through the interpreter's normal shutdown.

Fork is safe only before CUDA is initialised and with one thread: the imports run with PyTorch's
NVML-based device check (which leaves CUDA alone) and numpy's OpenBLAS held to one thread, and the
preloader refuses to serve — the bot then starts processes as before — if CUDA was initialised or a
second thread exists after them.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_MESSAGE = 1 << 20
# Modules every kind of child needs; what a child imports beyond these it imports as it would anyway.
PRELOADED = (
    "torch",
    "diffusers",
    "transformers",
    "gpu_worker.worker",
    "gpu_worker.runner",
    "gpu_worker.cache",
    "gpu_worker.families",
    "gpu_worker.safety",
)


@dataclass(frozen=True)
class ChildStart:
    """What a forked child runs: `python -m gpu_worker ARGV` (its pipe's --fd already in ARGV)."""

    argv: list[str]


def serve(fd: int) -> ChildStart | int:
    """Preload, then fork children on request until the bot closes the socket. Returns the exit code
    in the preloader; in a forked child, what it is to run."""
    # Ctrl-C reaches the whole process group: the bot reports it, and closing its end ends this one
    # (an interrupt amid the imports would only print a traceback under the bot's report).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # is_available() without initialising CUDA
    # numpy's OpenBLAS starts a thread per core as it loads, and a fork keeps only the forking thread:
    # one thread here, so numpy's own linear algebra runs on one thread in the children (the models
    # run on torch's threads, which each child starts itself).
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    control = socket.socket(fileno=fd)
    why = _preload()
    if why:
        _send(control, {"refused": why})
        return 1
    _send(control, {"ready": os.getpid()})
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd tells the loop a child ended
    children: set[int] = set()
    while True:
        ready, _, _ = select.select([control, wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
            _report_exits(control, children)
        if control not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 4)
        except OSError:
            data, fds = b"", []
        if not data:  # the bot is gone: its children have their own pipes to it and end with them
            return 0
        try:
            request = json.loads(data)
            # A tool (`make-tiny-…`, `safety-check`) has no pipe to the bot: its streams are all it has.
            pipe, stdio = (fds[0], fds[1:4]) if request.get("pipe", True) else (None, fds[0:3])
            if len(stdio) != 3:
                raise IndexError("three streams")
        except (ValueError, IndexError) as e:
            _send(control, {"failed": None, "error": f"bad request: {e}"})
            _close(fds)
            continue
        pid = os.fork()
        if pid == 0:
            os.close(wake_read)
            os.close(wake_write)
            control.close()
            return _become_child(request, pipe, stdio)
        children.add(pid)
        _close(fds)
        _send(control, {"started": request.get("start"), "pid": pid})
        _report_exits(control, children)


def _die_with_parent() -> None:
    """Ended with the bot, even amid the imports (Linux's PR_SET_PDEATHSIG): a command that ran one
    job and left does not leave this behind for seconds. The children it forks do not inherit it:
    they end with their own pipes to the bot."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _preload() -> str:
    """Import what children need; why forking would be unsafe afterwards ("" when it is safe)."""
    import importlib

    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except ImportError:  # a child that needs it fails as it would have without the preloader
            continue
    import torch

    if torch.cuda.is_initialized():
        return "CUDA was initialised while importing"
    threads = len(os.listdir(f"/proc/{os.getpid()}/task")) if Path("/proc/self/task").is_dir() else 1
    if threads != 1:
        return f"{threads} threads after importing (fork needs one)"
    return ""


def _become_child(request: dict, pipe: int | None, stdio: list[int]) -> ChildStart:
    """In the forked child: the bot's signals, streams, environment and folder, as a fresh process has."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python process
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request.get("env", {}).items()})
    os.chdir(request.get("cwd", "."))
    _reseed()
    argv = [str(a) for a in request.get("argv", [])] + (["--fd", str(pipe)] if pipe is not None else [])
    sys.argv = ["-m gpu_worker", *argv]
    return ChildStart(argv)


def _reseed() -> None:
    """Generators whose state a fork copies: each child its own, as separate processes have (Python's
    `random` reseeds itself after a fork)."""
    import numpy as np

    np.random.seed()


def _report_exits(control: socket.socket, children: set[int]) -> None:
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            children.discard(pid)
            continue
        if done:
            children.discard(pid)
            _send(control, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(control: socket.socket, message: dict) -> None:
    try:
        control.send(json.dumps(message).encode())
    except OSError:  # the bot is gone; the loop sees it at the next read
        pass


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
