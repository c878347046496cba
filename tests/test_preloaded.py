"""Child processes forked by the worker's preloader (bot/preloaded.py, gpu_worker/preload.py): what a
child gets from the bot at the moment it is asked for, how its end is reported, and when a child is
started afresh instead."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import asdict
from pathlib import Path

import pytest

from bot import preloaded
from bot.child_process import REPO_ROOT, ChildProcess
from common.protocol import Shutdown, WorkerReady, decode, encode
from common.worker_config import WorkerConfig
from tests.helpers import eventually_sync

aio = pytest.mark.asyncio


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def seen_by(pid: int) -> tuple[Path, list[str]]:
    """A process's folder and standard output and error, as /proc shows them."""
    proc = Path(f"/proc/{pid}")
    return (proc / "cwd").resolve(), [os.readlink(proc / "fd" / n) for n in "12"]


class Worker:
    """A `serve` worker as the service starts one, its frames and its exit kept."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.code: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.child = ChildProcess(
            "test worker",
            ["serve", "--config", json.dumps(asdict(WorkerConfig("cpu", log_level="WARNING")))],
            on_frame=lambda frame: self.ready.set() if isinstance(decode(frame), WorkerReady) else None,
            on_exit=lambda code: self.code.done() or self.code.set_result(code),
        )
        self.child.start()


@pytest.fixture
def warm(monkeypatch: pytest.MonkeyPatch) -> preloaded.Preloader:
    monkeypatch.delenv(preloaded.SWITCH, raising=False)
    preloaded.warm_up()
    assert preloaded._preloader is not None
    assert preloaded._preloader.wait_ready(120), "the preloader refused to serve"
    return preloaded._preloader


@aio
async def test_a_forked_child_runs_as_a_child_started_afresh_would(
    warm: preloaded.Preloader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    worker = Worker()
    pid = worker.child.pid
    assert pid is not None and parent_of(pid) == warm.process.pid  # forked, not started by us
    await asyncio.wait_for(worker.ready.wait(), 120)
    # In the repository's folder (as bot/child_process.py starts one), with the bot's streams of now.
    assert seen_by(pid) == (REPO_ROOT, seen_by(os.getpid())[1])
    worker.child.send(encode(Shutdown()))
    assert await asyncio.wait_for(worker.code, 120) == 0  # its own exit code, through the preloader


@aio
async def test_a_killed_child_is_reported_as_killed(warm: preloaded.Preloader) -> None:
    worker = Worker()
    await asyncio.wait_for(worker.ready.wait(), 120)
    worker.child.kill()
    assert await asyncio.wait_for(worker.code, 120) == -9  # as subprocess reports a SIGKILL


def test_children_start_afresh_when_the_preloader_cannot_stand_for_them(
    warm: preloaded.Preloader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment variable read at import changed since the preloader imported, or preloading
    switched off: no fork (bot/child_process.py then starts the child itself)."""
    for name, value in (("HF_HOME", "/elsewhere"), (preloaded.SWITCH, "false")):
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            assert preloaded.start(["serve"], 0) is None
    assert warm.ready  # and the preloader still serves the rest
    # What libraries set in the bot's own environment as they load says nothing of a child.
    seen = {"TORCHINDUCTOR_CACHE_DIR": "/tmp/x", "KMP_INIT_AT_FORK": "FALSE", "LD_LIBRARY_PATH": "/cv2", "HF_HOME": "/h"}
    assert preloaded._import_environment(seen) == {"HF_HOME": "/h"}


@aio
async def test_the_preloader_serves_with_the_default_thread_settings_and_ends_with_the_bot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the suite's OMP_NUM_THREADS=1, as on a user's machine, numpy's OpenBLAS would start a
    thread per core during the imports; the preloader holds it to one, so it can fork."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    own = preloaded.Preloader()  # not the shared one
    assert await asyncio.to_thread(own.wait_ready, 120), "the preloader refused to serve"
    own.process.send_signal(signal.SIGINT)  # Ctrl-C reaches the process group: the bot answers it, not this
    own.close()  # what the bot's exit does
    assert await asyncio.to_thread(own.process.wait, 60) == 0


def test_a_forked_child_takes_the_environment_it_is_sent(tmp_path: Path) -> None:
    """What the preloader's child does first (/proc shows a process's environment as it was exec'd,
    so the child reports its own): the bot's environment replaces the preloader's, its folder too."""
    from gpu_worker.preload import _become_child

    read, write = os.pipe()
    streams = [os.dup(fd) for fd in (0, 1, 2)]
    pid = os.fork()
    if pid == 0:  # the child reports and leaves at once, whatever happens
        try:
            start = _become_child({"argv": ["serve"], "env": {"EASEL_TEST_MARK": "sent"}, "cwd": str(tmp_path)}, 9, streams)
            report = {"mark": os.environ.get("EASEL_TEST_MARK"), "path": os.environ.get("PATH"), "cwd": os.getcwd()}
            report["interruptible"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler
            os.write(write, json.dumps(report | {"argv": start.argv}).encode())
        finally:
            os._exit(0)
    os.close(write)
    for fd in streams:
        os.close(fd)
    os.waitpid(pid, 0)
    with os.fdopen(read) as got:
        report = json.loads(got.read())
    assert report == {"mark": "sent", "path": None, "cwd": str(tmp_path), "interruptible": True, "argv": ["serve", "--fd", "9"]}


def test_the_preloader_goes_with_a_bot_that_dies_while_it_imports() -> None:
    """A bot that dies while its preloader imports (a command that ran one job and left) leaves
    nothing behind: the preloader asked the kernel to end it with its parent. Here a parent forks a
    child that asks so and then waits forever, and the parent leaves at once."""
    import subprocess
    import sys

    script = (
        "import os\n"
        "from gpu_worker.preload import _die_with_parent\n"
        "asked, told = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    _die_with_parent(); print(os.getpid(), flush=True); os.write(told, b'x'); os.read(0, 1)\n"
        "else:\n"
        "    os.read(asked, 1)\n"  # the parent leaves once its child has asked
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.wait(60)
    try:
        eventually_sync(lambda: not preloaded._alive(child), "the child ended with its parent")
    finally:
        if preloaded._alive(child):
            os.kill(child, signal.SIGKILL)


@aio
async def test_a_worker_tool_is_forked_and_its_output_and_errors_come_back(warm, monkeypatch, tmp_path: Path) -> None:
    from PIL import Image

    from bot.worker_tools import run_worker_tool
    from common.errors import EaselError

    forked: list[object] = []
    start = preloaded.start
    monkeypatch.setattr(preloaded, "start", lambda *args: forked.append(start(*args)) or forked[-1])
    picture = tmp_path / "grey.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(picture)
    scores = json.loads(await run_worker_tool("safety-check", str(picture)))
    assert scores["score"] == 0.0 and isinstance(forked[-1], preloaded.PreloadedProcess)
    assert forked[-1].returncode == 0
    with pytest.raises(EaselError, match=r"nothing\.png"):  # its last line of errors, as a fresh process's
        await run_worker_tool("safety-check", str(tmp_path / "nothing.png"))
    assert isinstance(forked[-1], preloaded.PreloadedProcess) and forked[-1].returncode != 0
