"""Shared fixtures: an isolated configuration, tiny checkpoints, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from bot.checkpoints.registry import CheckpointRegistry

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# One compute thread per process (inherited by the workers the tests start). The tiny models gain
# nothing from a second thread, and on a shared 2-core machine OpenMP's threads spin at every
# barrier waiting for one another: with two busy processes beside it, the demo model's 20 steps took
# 152 s instead of 8 (one thread: 8 s). Benchmarks (bench/) keep the machine's default.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """The preloader starts importing while the tests are collected (in each process that runs tests:
    not in xdist's controller, which runs none)."""
    if "PYTEST_XDIST_WORKER" in os.environ or not getattr(config.option, "numprocesses", None):
        from bot import preloaded

        preloaded.warm_up()


@pytest.fixture(scope="session", autouse=True)
def preloader_warmed() -> None:
    """Each test process has the worker preloader (bot/preloaded.py), as a long-running bot has it by
    its second child, and waits for its imports once (begun during collection): every worker and tool
    the tests start is then forked from it, none pays the imports again."""
    from bot import preloaded

    preloaded.warm_up()
    if preloaded._preloader is not None:
        preloaded._preloader.wait_ready(120)


@pytest.fixture(autouse=True)
def no_worker_left_held() -> Iterator[None]:
    """A test that fails while it holds a worker (tests/helpers.HeldWorker) lets it go on afterwards."""
    yield
    from tests.helpers import resume_held_workers

    resume_held_workers()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny SD1/SD2/SDXL checkpoints, made once per run with the real maker."""
    from gpu_worker.testing.tiny import make_tiny_checkpoint

    folder = tmp_path_factory.mktemp("tiny")
    for arch in ("sd1", "sd2", "sdxl"):
        make_tiny_checkpoint(arch, folder / f"tiny-{arch}.safetensors", seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_loras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny kohya-layout LoRAs and embeddings for the tiny SD1, SD2 and SDXL models (lora-sd1.safetensors,
    embedding-sd1.safetensors, …), and a LyCORIS LoCon for SD1 (locon-sd1.safetensors)."""
    from gpu_worker.testing.tiny_networks import make_tiny_embedding, make_tiny_lora

    folder = tmp_path_factory.mktemp("tiny-loras")
    for base in ("sd1", "sd2", "sdxl"):
        make_tiny_lora(base, folder / f"lora-{base}.safetensors", seed=1)
        make_tiny_embedding(base, folder / f"embedding-{base}.safetensors", seed=2, vectors=3)
    make_tiny_lora("sd1", folder / "locon-sd1.safetensors", seed=3, locon=True)
    return folder


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean configuration: models and data directories under tmp_path, no token, no config files."""
    for key in list(os.environ):
        if key.startswith("EASEL_") or key == "DISCORD_TOKEN":
            monkeypatch.delenv(key)
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("EASEL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("EASEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def models(env: Path) -> Path:
    return env / "models"


@pytest.fixture
def add_tiny(models: Path, tiny_dir: Path):
    def copy(arch: str, name: str | None = None) -> Path:
        target = models / (name or f"tiny-{arch}.safetensors")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_dir / f"tiny-{arch}.safetensors", target)
        return target

    return copy


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(env: Path, capsys: pytest.CaptureFixture[str]):
    """Run `python bot.py ARGS` in-process (fast) and capture its output."""
    from cli import main

    def run(*args: str) -> CliResult:
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_bot_py(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python bot.py ARGS` as a real process."""
    return subprocess.run(
        [sys.executable, str(REPO / "bot.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def interruptible() -> None:
    """In the child before exec: Ctrl-C (SIGINT) as a terminal sends it. A suite started in the
    background (`./dev test &`) ignores SIGINT, and a child inherits that, so SIGINT would not stop it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_bot_py(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start `python bot.py ARGS` as a real process, its output piped; the caller ends it (by its pid).
    It leads a process group of its own, so `os.killpg(proc.pid, …)` reaches it and the children it
    starts, as a terminal's Ctrl-C does, and nothing else."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "bot.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
        process_group=0,
    )


@pytest_asyncio.fixture
async def registry(tmp_path: Path) -> AsyncIterator[CheckpointRegistry]:
    """A registry over an empty models folder, its database in tmp_path."""
    from bot.checkpoints.registry import CheckpointRegistry
    from bot.db import open_database

    (tmp_path / "models").mkdir(exist_ok=True)
    db = await open_database(tmp_path / "easel.sqlite3")
    yield CheckpointRegistry(db, tmp_path / "models")
    await db.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow tests first (each file's tests in their order): xdist hands whole files to
    its processes as they come free, so a long file left for the end would run alone while the
    other process waits."""
    slow: dict[str, int] = {}
    for item in items:
        slow[item.nodeid.split("::")[0]] = slow.get(item.nodeid.split("::")[0], 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.nodeid.split("::")[0]])
