"""A child process we talk to in messages: the one supervision helper for the worker, the embedding
model and the merge process.

The child is `python -m gpu_worker COMMAND … --fd N` (forked by the worker's preloader when it can:
bot/preloaded.py), joined to the bot by a socket pair wrapped in
multiprocessing Connections (what `multiprocessing.Pipe` does): length-prefixed frames, which each
side fills with JSON — never pickles. A reader thread waits on the pipe and hands every frame to the
event loop; when the pipe closes (the child exited, crashed or was killed) it reports the exit code
at once. `stop` asks politely (a goodbye frame, or closing our end), then kills after a grace period.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bot import preloaded

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_FRAME_BYTES = 256 << 20  # a frame past this is refused: the child is broken or hostile

FrameCallback = Callable[[bytes], None]
ExitCallback = Callable[["int | None"], None]


class ChildProcess:
    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        on_frame: FrameCallback,
        on_exit: ExitCallback,
        max_frame: int = MAX_FRAME_BYTES,
    ) -> None:
        self.name = name
        self.command = command
        self._on_frame = on_frame
        self._on_exit = on_exit
        self._max_frame = max_frame
        self._process: subprocess.Popen[bytes] | preloaded.PreloadedProcess | None = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context: contextvars.Context | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the child (returns at once); frames and the exit arrive through the callbacks."""
        self._loop = asyncio.get_running_loop()
        # Callbacks run in the context of whoever started the child, as an awaited call would (a
        # progress callback may rely on context variables of the command that started a merge).
        self._context = contextvars.copy_context()
        ours, theirs = socket.socketpair()
        # Forked by the worker's preloader when it can (bot/preloaded.py): its imports are done already.
        self._process = preloaded.start(self.command, theirs.fileno()) or subprocess.Popen(
            [sys.executable, "-m", "gpu_worker", *self.command, "--fd", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            cwd=REPO_ROOT,
        )
        theirs.close()  # so we see EOF the moment the child dies
        self._conn = Connection(ours.detach())
        threading.Thread(
            target=self._read, args=(self._conn, self._process), name=f"{self.name}-frames", daemon=True
        ).start()
        log.info("%s starting (pid %s)", self.name, self._process.pid)

    def send(self, frame: bytes) -> bool:
        """Send one frame; False if the child is gone (its exit is reported separately)."""
        if self._conn is None:
            return False
        try:
            self._conn.send_bytes(frame)
        except (BrokenPipeError, OSError) as e:
            log.warning("%s: pipe closed while sending (%s)", self.name, e)
            return False
        return True

    def _read(self, conn: Connection, process: subprocess.Popen[bytes] | preloaded.PreloadedProcess) -> None:
        while True:
            try:
                frame = conn.recv_bytes(self._max_frame)
            except (EOFError, OSError):
                break
            self._post(self._on_frame, frame)
        conn.close()
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # it closed the pipe but lingers: it is of no use any more
            process.kill()
            code = process.wait()
        self._post(self._on_exit, code)

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args, context=self._context)
        except RuntimeError:  # the loop is closed: the bot is shutting down
            pass

    async def stop(self, goodbye: bytes | None = None, grace: float = 10.0) -> None:
        """Ask the child to finish (a goodbye frame, else our end closes), then kill it after `grace` s."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        if goodbye is not None:
            self.send(goodbye)
        elif self._conn is not None:
            # We stop sending (the child reads EOF and ends); the reader thread still sees it exit.
            try:
                with socket.socket(fileno=os.dup(self._conn.fileno())) as ours:
                    ours.shutdown(socket.SHUT_WR)
            except OSError:  # the reader closed the pipe already: the child is gone
                pass
        try:
            await asyncio.to_thread(process.wait, grace)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the exit is reported like any other."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()


OrderProgress = Callable[[int, int], None]


async def run_order(
    command: str,
    order: bytes,
    progress: OrderProgress | None = None,
    on_start: Callable[[int | None], None] | None = None,
) -> dict[str, Any]:
    """Hand one order to a one-shot `python -m gpu_worker COMMAND` and follow it to its exit: its
    progress frames go to `progress`, a refusal frame ({"error"}) becomes an EaselError, and its
    last report ({"peak_rss_bytes", …}) is returned. A cancelled caller kills the process and waits."""
    from common.errors import EaselError

    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int | None] = loop.create_future()
    failure: list[str] = []
    report: dict[str, Any] = {}
    stopping = False

    def on_frame(frame: bytes) -> None:
        if stopping:  # cancelled or failed: late progress must not call back into the caller
            return
        try:
            update = json.loads(frame)
        except ValueError:
            return
        if not isinstance(update, dict):
            return
        if "error" in update:
            failure.append(str(update["error"]))
        elif "peak_rss_bytes" in update:
            report.update(update)
        elif progress is not None:
            progress(int(update["done"]), int(update["total"]))

    def on_exit(code: int | None) -> None:
        if not exited.done():
            exited.set_result(code)

    child = ChildProcess(f"{command} process", [command], on_frame=on_frame, on_exit=on_exit)
    child.start()
    if on_start is not None:
        on_start(child.pid)
    try:
        child.send(order)  # the order, as data: the process does not plan again
        code = await exited
        if code != 0:
            raise EaselError(failure[-1] if failure else f"the {command} failed (exit code {code})")
    except BaseException:
        stopping = True
        child.kill()
        await despite_cancellation(exited)  # the cleanup finishes even if the caller cancels again
        raise
    return report


async def despite_cancellation(future: asyncio.Future[Any]) -> None:
    """Wait for `future` to finish even if the waiting task is cancelled, again and again, meanwhile."""
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            continue
