"""Run one of the worker package's tools (`python -m gpu_worker …`) as its own process.

torch lives in the worker package; the CLI process stays light and never imports it. Forked by the
worker's preloader when it is up (bot/preloaded.py: the bot's model previews checked, a tiny model
made, in a fraction of a second), started afresh otherwise.
"""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bot import preloaded
from common.errors import EaselError

REPO_ROOT = Path(__file__).resolve().parents[1]


async def run_worker_tool(*argv: str) -> str:
    """The tool's output; EaselError with its last line of errors when it fails."""
    forked = await asyncio.to_thread(_forked, list(argv))
    if forked is not None:
        code, stdout, stderr = forked
        return _answer(argv, code, stdout, stderr)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gpu_worker",
        *argv,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    return _answer(argv, proc.returncode, stdout, stderr)


def _answer(argv: tuple[str, ...], code: int | None, stdout: bytes, stderr: bytes) -> str:
    if code != 0:
        lines = stderr.decode().strip().splitlines()
        raise EaselError(lines[-1].removeprefix("error: ") if lines else f"{argv[0]} failed")
    return stdout.decode().strip()


def _forked(argv: list[str]) -> tuple[int, bytes, bytes] | None:
    """The tool forked by the preloader, its streams read to their end: (exit code, stdout, stderr);
    None when the preloader cannot start it."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    quiet = os.open(os.devnull, os.O_RDONLY)
    try:
        child = preloaded.start(argv, None, (quiet, out_write, err_write))
    finally:
        for fd in (quiet, out_write, err_write):  # the child has its own copies
            os.close(fd)
    if child is None:
        os.close(out_read)
        os.close(err_read)
        return None
    with ThreadPoolExecutor(2) as readers:  # both at once: a full stderr pipe must not stall stdout
        stdout, stderr = readers.submit(_read_all, out_read), readers.submit(_read_all, err_read)
        return child.wait(), stdout.result(), stderr.result()


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as stream:
        return stream.read()
