"""Run one of the worker package's tools (`python -m gpu_worker …`) as its own process.

torch lives in the worker package; the CLI process stays light and never imports it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from common.errors import EaselError

REPO_ROOT = Path(__file__).resolve().parents[1]


async def run_worker_tool(*argv: str) -> str:
    """The tool's output; EaselError with its last line of errors when it fails."""
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
    if proc.returncode != 0:
        lines = stderr.decode().strip().splitlines()
        raise EaselError(lines[-1].removeprefix("error: ") if lines else f"{argv[0]} failed")
    return stdout.decode().strip()
