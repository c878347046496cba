"""GPU workers on other machines: a real redis-server on loopback, two real remote worker processes
(`python -m gpu_worker remote`) with models folders of their own, and the real generation service.

Worker a holds tiny SD1 and SDXL; worker b holds the same SD1 file under another name in a
subfolder; neither holds SD2. The tests that kill a worker or restart Redis bring the cluster back
before they end, so none depends on running last.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from bot import preloaded
from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.generation.checkpoint_ref import CheckpointRef, resolve_checkpoint
from bot.generation.jobs import Cancelled, Failed, Finished, JobState, Preview, Progress, Started
from bot.generation.model_share import ShareOptions
from bot.generation.remote import LEASE_SECONDS
from bot.generation.service import GenerationService, JobHandle, WorkerStatus
from bot.generation.worker_status import describe
from bot.rules.limits import GenerationRequest, Limits, validate
from common.protocol import (
    EVENTS_STREAM,
    ImageResult,
    JobDone,
    JobPart,
    LoraUse,
    RunBatch,
    WorkerHeartbeat,
    broker_entry,
    commands_stream,
    encode,
)
from tests.conftest import REPO, run_bot_py
from tests.helpers import eventually, queue_unchecked

REDIS_SERVER = shutil.which("redis-server")
pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (./dev test installs it as root)"),
]


def ends_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, however it dies, so a worker
    (which otherwise retries its broker for ever) never outlives the suite."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server on a free loopback port, nothing saved to disk; stopped by its pid."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [*argv, "--dir", str(self.folder)], stdout=log, stderr=log, preexec_fn=ends_with_parent
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start; see {self.folder / 'redis.log'}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class Cluster:
    tmp: Path
    redis: RedisServer
    service: GenerationService
    checkpoints: dict[str, CheckpointRef]
    workers: dict[str, subprocess.Popen[bytes] | preloaded.PreloadedProcess] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)
    metrics_port: int = 0

    def start_worker(self, name: str, url: str | None = None, *extra: str) -> subprocess.Popen[bytes] | preloaded.PreloadedProcess:
        """`python -m gpu_worker remote …`, forked by this test process's preloader (bot/preloaded.py)
        when it is up, as the bot starts its own workers: the same command without its imports to wait
        for; else started afresh."""
        argv = ["remote", "--broker", url or self.redis.url]
        argv += ["--models-dir", str(self.folders[name]), "--devices", "cpu", "--log-level", "INFO", *extra]
        with (self.tmp / f"worker-{name}.log").open("ab") as log, open(os.devnull, "rb") as quiet:
            process = preloaded.start(argv, None, (quiet.fileno(), log.fileno(), log.fileno())) or subprocess.Popen(
                [sys.executable, "-m", "gpu_worker", *argv],
                cwd=REPO,
                stdout=log,
                stderr=log,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
                preexec_fn=ends_with_parent,
            )
        self.workers[name] = process
        return process

    def worker_id(self, name: str) -> str | None:
        pid = self.workers[name].pid
        return next((w.worker_id for w in self.service.status().workers if w.pid == pid), None)

    async def joined(self, *names: str) -> None:
        await eventually(lambda: all(self.worker_id(n) for n in names), f"workers {names} joined")

    def stop_workers(self) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                process.terminate()
        for process in self.workers.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@asynccontextmanager
async def running_cluster(
    tmp: Path,
    tiny_dir: Path,
    workers: dict[str, dict[str, str]],
    *,
    extra: dict[str, tuple[str, ...]] | None = None,
    metrics_for: str = "",
    worker_keys: dict[str, tuple[bytes, ...]] | None = None,
    share: ShareOptions | None = None,
) -> AsyncIterator[Cluster]:
    """redis-server, a bot's generation service on it, and one remote worker process per name in
    `workers` (its models folder: file name -> the tiny checkpoint's arch it is a copy of); every
    tiny SD checkpoint resolved."""
    server = RedisServer(tmp)
    server.start()
    db = await open_database(tmp / "easel.sqlite3")
    registry = CheckpointRegistry(db, tiny_dir)
    checkpoints = {
        arch: await resolve_checkpoint(registry, str(tiny_dir / f"tiny-{arch}.safetensors"), allow_path=True)
        for arch in ("sd1", "sd2", "sdxl")
    }
    limits = Limits(max_queued_per_user=10, max_batch_images=1)
    service = GenerationService(db, [], limits, broker_url=server.url, worker_keys=worker_keys, share=share)
    cluster = Cluster(tmp, server, service, checkpoints, metrics_port=free_port())
    for name, files in workers.items():
        folder = tmp / f"models-{name}"
        folder.mkdir()
        for target, arch in files.items():
            (folder / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny_dir / f"tiny-{arch}.safetensors", folder / target)
        cluster.folders[name] = folder
    for name in workers:
        metrics = ("--metrics-port", str(cluster.metrics_port)) if name == metrics_for else ()
        cluster.start_worker(name, None, *metrics, *(extra or {}).get(name, ()))
    try:
        await service.start(ready_within=60)
        await cluster.joined(*workers)
        yield cluster
    finally:
        await service.close()
        cluster.stop_workers()
        server.stop()
        await db.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    workers = {"a": {"a-sd1.safetensors": "sd1", "tiny-sdxl.safetensors": "sdxl"}, "b": {"sub/renamed.safetensors": "sd1"}}
    # The bot shares its files with workers that fetch (one joins for test_a_worker_with_an_empty_folder_…).
    share = ShareOptions(serve=True, host="127.0.0.1", port=0)
    async with running_cluster(tmp_path_factory.mktemp("remote"), tiny_dir, workers, metrics_for="a", share=share) as made:
        yield made


def request(user: str, **values) -> GenerationRequest:
    return GenerationRequest.of(**({"prompt": "a lighthouse", "requester_id": user, "steps": 3, "seed": 5} | values))


async def finished(handle: JobHandle, within: float = 60) -> list[object]:
    async def collect() -> list[object]:
        return [event async for event in handle.events()]

    return await asyncio.wait_for(collect(), within)


async def test_workers_join_and_say_what_they_hold(cluster: Cluster) -> None:
    status = cluster.service.status()
    assert status.broker.startswith("connected since")
    remote = {w.worker_id: w for w in status.workers}
    assert set(remote) == {cluster.worker_id("a"), cluster.worker_id("b")}
    for worker in remote.values():
        assert worker.machine == socket.gethostname() and worker.device == "cpu"
        # A worker listed is one heard within its lease (an older one is presumed gone, not listed).
        assert worker.memory_total > worker.memory_free > 0 and 0 <= worker.heartbeat_age < LEASE_SECONDS
        title, body = describe(worker)  # as /status and `bot.py workers` show it
        assert title == f"Worker {worker.slot} · cpu on {worker.machine}"
        assert "GB free" in body and f"last heartbeat {worker.heartbeat_age:.1f} s ago · {worker.worker_id}" in body


async def test_jobs_go_only_to_workers_that_hold_their_files(cluster: Cluster) -> None:
    service, ck = cluster.service, cluster.checkpoints
    a, b = cluster.worker_id("a"), cluster.worker_id("b")
    # SDXL: only a holds it, so both go to a, even when b is idle.
    handles = [await queue_unchecked(service, request(f"xl{i}"), ck["sdxl"]) for i in range(2)]
    for handle in handles:
        assert isinstance((await finished(handle))[-1], Finished)
        assert a in handle.job.device
    # SD1: both hold it (b under another name): two at once run on both workers.
    handles = [await queue_unchecked(service, request(f"sd1-{i}", steps=20), ck["sd1"]) for i in range(2)]
    for handle in handles:
        events = await finished(handle)
        assert isinstance(events[-1], Finished) and any(isinstance(e, Preview) for e in events)  # previews stream back
    assert {a in h.job.device for h in handles} == {True, False} and any(b in h.job.device for h in handles)
    # Affinity: the next SD1 job goes where SD1 is loaded already (once both have said they are done).
    await eventually(lambda: all(w.state == "idle" for w in service.status().workers), "both workers idle")
    loaded_on = {w.worker_id for w in service.status().workers if "tiny-sd1" in w.loaded}
    again = await queue_unchecked(service, request("sd1-again"), ck["sd1"])
    await finished(again)
    assert any(worker in again.job.device for worker in loaded_on), (loaded_on, again.job.device)
    # SD2: no worker holds it: refused at once, saying which file and who lacks it.
    [*_, failed] = await finished(await queue_unchecked(service, request("sd2"), ck["sd2"]))
    assert isinstance(failed, Failed) and "no GPU worker can run this job" in failed.message
    assert f"does not hold checkpoint tiny-sd2 [{ck['sd2'].sha256[:10]}]" in failed.message


async def test_a_head_waiting_for_a_busy_worker_does_not_hold_back_a_job_an_idle_one_can_run(cluster: Cluster) -> None:
    """No head-of-line blocking: worker a runs a long SDXL job; the next SDXL job (only a holds SDXL)
    waits for a, first in the queue; an SD1 job behind it runs on idle b meanwhile."""
    service, ck = cluster.service, cluster.checkpoints
    long = await queue_unchecked(service, request("hol-long", steps=150, width=128, height=128), ck["sdxl"])
    async for event in long.events():
        if isinstance(event, Progress):
            break
    head = await queue_unchecked(service, request("hol-head"), ck["sdxl"])
    behind = await queue_unchecked(service, request("hol-behind"), ck["sd1"])
    assert isinstance((await finished(behind))[-1], Finished) and cluster.worker_id("b") in behind.job.device
    assert long.job.state is JobState.RUNNING and head.job.state is JobState.QUEUED and service.position(head.job.id) == 1
    await service.cancel(long.job.id)
    assert isinstance((await finished(head))[-1], Finished) and cluster.worker_id("a") in head.job.device


async def test_cancel_reaches_a_remote_worker_between_steps(cluster: Cluster) -> None:
    handle = await queue_unchecked(cluster.service, request("canceller", steps=150, width=192, height=192), cluster.checkpoints["sd1"]
    )
    async for event in handle.events():
        if isinstance(event, Progress):
            break
    assert await cluster.service.cancel(handle.job.id) == "cancelling"
    assert isinstance((await finished(handle, 30))[-1], Cancelled)


async def started(cluster: Cluster, user: str) -> tuple[JobHandle, WorkerStatus, str]:
    """A 60-step SD1 job, once a worker has started it: its handle, that worker, and its batch id."""
    service = cluster.service
    handle = await queue_unchecked(service, request(user, steps=60, width=128, height=128), cluster.checkpoints["sd1"])
    async for event in handle.events():
        if isinstance(event, Started):
            break
    running = next(w for w in service.status().workers if handle.job.id in w.jobs)
    batch_id = next(w.batch.batch_id for w in service._workers if w.batch and w.batch.jobs[0].job_id == handle.job.id)
    return handle, running, batch_id


async def test_forged_entries_are_refused(cluster: Cluster) -> None:
    service = cluster.service
    client = aioredis.Redis.from_url(cluster.redis.url)
    refused = service._broker.refused
    handle, running, batch_id = await started(cluster, "forged")
    fake = JobDone(batch_id, handle.job.id, (), "cpu", 0.0, 0.0, "device", 1)
    forged = [
        {"x": b"1"},  # not our fields
        {"w": b"a", "m": b"RunBatch\n{not json"},  # not a frame
        {"w": b"a", "m": b"Pickle\n\x80\x04\x95"},  # not one of our messages
        broker_entry("intruder", WorkerHeartbeat(running.worker_id, "x", "cpu", 1, 0, 1, 1, ("sd1",), 0, (), (), ())),
    ]
    for fields in forged:
        await client.xadd(EVENTS_STREAM, fields)
    # A well-formed result, but from no worker of this bot, and then from the other worker: discarded.
    other = next(w.worker_id for w in service.status().workers if w.worker_id != running.worker_id)
    await client.xadd(EVENTS_STREAM, broker_entry("intruder", fake))
    await client.xadd(EVENTS_STREAM, broker_entry(other, fake))
    [*_, done] = await finished(handle)
    assert isinstance(done, Finished) and len(done.job.images) == 1  # the real result, not the forged empty one
    assert service._broker.refused == refused + 4
    # A heartbeat from a "worker" that never started (nobody reads its command stream): no worker,
    # no prompt sent there, however often it beats.
    ghost = WorkerHeartbeat("ghost-1", "x", "cpu", 1, 0, 1 << 30, 1 << 30, ("sd1", "sdxl"), 0, (), (), ())
    for _ in range(3):
        await client.xadd(EVENTS_STREAM, broker_entry("ghost-1", ghost))
    await eventually(lambda: service._broker.refused == refused + 5, "the ghost's heartbeats refused")
    assert "ghost-1" not in {w.worker_id for w in service.status().workers}
    assert await client.xlen(commands_stream("ghost-1")) == 0

    # A forged command naming a file the worker does not hold, at a path it must not open.
    idle = cluster.worker_id("b")
    secret = cluster.tmp / "secret.safetensors"
    secret.write_bytes(b"not a model")
    load = cluster.checkpoints["sd1"].load_request()
    bogus = RunBatch.of(
        batch_id="forgedbatch1",
        load=dataclasses.replace(load, path=str(secret), sha256=hashlib.sha256(b"x").hexdigest()),
        jobs=(JobPart("forgedjob", "x", "", (1,)),),
        width=64,
        height=64,
        steps=2,
        cfg=7.0,
        sampler="Euler",
        schedule="Automatic",
    )
    await client.xadd(commands_stream(idle), broker_entry("bot", bogus))
    log = cluster.tmp / "worker-b.log"
    await eventually(lambda: "batch forgedbatch1 refused" in log.read_text(), "the worker refused the forged batch")
    assert "batch forgedbatch1 refused: this GPU worker does not hold checkpoint tiny-sd1" in log.read_text()
    await client.aclose()


async def test_a_result_without_a_picture_check_score_is_withheld(cluster: Cluster) -> None:
    """A worker that does not run the picture check (or a forged result in its name): its picture
    has no score, which the rules read as over every threshold (fail closed)."""
    from bot.guilds.settings import Effective

    client = aioredis.Redis.from_url(cluster.redis.url)
    handle, running, batch_id = await started(cluster, "unscored")
    result = ImageResult(b"\x89PNG\r\n\x1a\n", 5, "a lighthouse\nSteps: 60")
    body = json.loads(encode(JobDone(batch_id, handle.job.id, (result,), "cpu", 0.0, 0.0, "device", 1)).partition(b"\n")[2])
    del body["images"][0]["nsfw_score"]  # as a worker that never heard of the check would send it
    await client.xadd(EVENTS_STREAM, {"w": running.worker_id.encode(), "m": b"JobDone\n" + json.dumps(body).encode()})
    [*_, done] = await finished(handle)
    assert isinstance(done, Finished) and done.job.images[0].nsfw_score is None
    ordinary = Effective(None, None)  # the bot's defaults: withhold in ordinary channels, allow in adult ones
    assert ordinary.picture_verdict(done.job.images[0].nsfw_score, False) == "withhold"
    assert ordinary.picture_verdict(done.job.images[0].nsfw_score, True) == "post"
    await client.aclose()


async def running_job(cluster: Cluster, user: str, steps: int) -> tuple[JobHandle, list[object], WorkerStatus]:
    """A 128×128 SD1 job, once it is past its first step: its handle, its events so far, its worker."""
    handle = await queue_unchecked(cluster.service, request(user, steps=steps, width=128, height=128), cluster.checkpoints["sd1"])
    events: list[object] = []
    async for event in handle.events():
        events.append(event)
        if isinstance(event, Progress):
            break
    [running] = [w for w in cluster.service.status().workers if handle.job.id in w.jobs]
    return handle, events, running


@pytest.mark.slow
async def test_kill_9_mid_job_reruns_on_the_other_worker(cluster: Cluster) -> None:
    service = cluster.service
    handle, events, running = await running_job(cluster, "victim", steps=40)
    name = next(n for n, p in cluster.workers.items() if p.pid == running.pid)
    os.kill(running.pid, signal.SIGKILL)
    after_kill: list[object] = []
    async for event in handle.events():  # the lease runs out, the job goes back to the head of the queue
        after_kill.append(event)
    events += after_kill
    assert any(isinstance(e, Started) for e in after_kill), "the job never started again"
    assert isinstance(events[-1], Finished) and sum(isinstance(e, Finished | Failed) for e in events) == 1
    assert running.worker_id not in handle.job.device and handle.job.attempts == 1
    await service.flush()
    assert (await service.get_job(handle.job.id)).state is JobState.DONE
    cluster.workers[name].wait()
    cluster.start_worker(name, None, *(["--metrics-port", str(cluster.metrics_port)] if name == "a" else []))
    await cluster.joined(name)


@pytest.mark.slow
async def test_a_worker_cut_off_mid_job_is_replaced_and_its_late_result_discarded(cluster: Cluster) -> None:
    """SIGSTOP is a pulled cable as the bot sees it: no heartbeat, no word. The job runs again
    elsewhere; when the worker comes back (SIGCONT) and finishes, what it sends is discarded."""
    service = cluster.service
    handle, events, running = await running_job(cluster, "cable", steps=30)
    os.kill(running.pid, signal.SIGSTOP)
    try:
        async for event in handle.events():
            events.append(event)
    finally:
        os.kill(running.pid, signal.SIGCONT)
    assert isinstance(events[-1], Finished) and running.worker_id not in handle.job.device
    assert sum(isinstance(e, Started) for e in events) == 2
    # Back, it finishes the old batch and says so; the job stays as the other worker made it.
    await eventually(lambda: any(w.worker_id == running.worker_id for w in service.status().workers), "it came back")
    await eventually(lambda: all(w.state == "idle" for w in service.status().workers), "its old batch ended")
    record = await service.get_job(handle.job.id)
    assert record.state is JobState.DONE and running.worker_id not in (record.row["device"] or "")
    assert handle.job.images == events[-1].job.images and len(handle.job.images) == 1


async def test_metrics_endpoints(cluster: Cluster) -> None:
    await finished(
        await queue_unchecked(cluster.service, request("metrics"), cluster.checkpoints["sd2"])
    )  # fails: no worker holds it
    port = free_port()
    cluster.service.metrics.serve("127.0.0.1", port)
    try:
        async with httpx.AsyncClient() as client:
            bot = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            worker = (await client.get(f"http://127.0.0.1:{cluster.metrics_port}/metrics")).text
    finally:
        cluster.service.metrics.close()
    for line in ('easel_jobs{state="queued"} 0.0', "easel_broker_up 1.0", 'easel_workers{state="idle"} 2.0'):
        assert line in bot
    for name in ("easel_job_wait_seconds_bucket", "easel_job_run_seconds_count", "easel_images_total"):
        assert name in bot
    assert 'easel_job_failures_total{reason="no_capable_worker"}' in bot
    assert "easel_worker_busy" in worker and "easel_worker_broker_up" in worker


async def test_redis_restart_mid_run_every_job_ends(cluster: Cluster) -> None:
    service = cluster.service
    handles = [
        await queue_unchecked(service, request(f"outage{i}", steps=30, width=128, height=128), cluster.checkpoints["sd1"])
        for i in range(3)
    ]
    async for event in handles[0].events():
        if isinstance(event, Progress):
            break
    cluster.redis.stop()
    await eventually(lambda: service.status().broker.startswith("unreachable"), "the bot noticed the broker gone")
    cluster.redis.start()
    results = await asyncio.wait_for(asyncio.gather(*(finished(h, 120) for h in handles[1:])), 150)
    first = await finished(handles[0], 120)
    for events in [first, *results]:
        assert sum(isinstance(e, Finished | Failed | Cancelled) for e in events) == 1
    await service.flush()
    for handle in handles:
        assert (await service.get_job(handle.job.id)).state in (JobState.DONE, JobState.FAILED)
    await eventually(lambda: service.status().broker.startswith("connected"), "the bot reconnected")
    await cluster.joined("a", "b")
    after = await queue_unchecked(service, request("after-outage"), cluster.checkpoints["sd1"])
    assert isinstance((await finished(after))[-1], Finished)


async def test_cli_generate_through_a_broker_and_list_workers(cluster: Cluster, tiny_dir: Path, tmp_path: Path) -> None:
    # Its own broker database: one bot (the CLI here) schedules per broker database.
    url = cluster.redis.url.rsplit("/", 1)[0] + "/1"
    cluster.folders["cli"] = cluster.folders["a"]
    worker = cluster.start_worker("cli", url)
    env = {**os.environ, "EASEL_MODELS_DIR": str(tiny_dir), "EASEL_DATA_DIR": str(tmp_path / "data")}
    try:
        made = await asyncio.to_thread(
            run_bot_py,
            "generate", "--broker", url, "--checkpoint", str(tiny_dir / "tiny-sd1.safetensors"), "--prompt", "a fox", "--steps", "2",
            "--out", str(tmp_path / "out"), cwd=tmp_path, env=env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert "waiting for a remote worker" in made.stdout and f"({socket.gethostname()}-cpu-" in made.stdout
        listed = await asyncio.to_thread(run_bot_py, "workers", "--broker", url, cwd=tmp_path, env=env)
        assert listed.returncode == 0 and "Worker 0 · cpu on " in listed.stdout and "last heartbeat" in listed.stdout
        bad_url = ("generate", "--broker", "http://x", "--checkpoint", "a", "--prompt", "b", "--out", "o")
        bad = await asyncio.to_thread(run_bot_py, *bad_url, cwd=tmp_path, env=env)
        assert bad.returncode == 2 and "redis://" in bad.stderr
    finally:
        worker.terminate()
        worker.wait(10)


ACL = "on >s3cret ~easel:* -@all +@stream +@connection +set +get +mget +scan +client"  # as docs/remote-workers.md


def start_tls_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server with TLS only (a test CA made with openssl) and one ACL user, easel; the
    default user off."""
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem",
         "-days", "1", "-extfile", "ext.cnf"],
    ):  # fmt: skip
        subprocess.run(["openssl", *argv], cwd=folder, check=True, capture_output=True)
    port = free_port()
    log = (folder / "redis.log").open("ab")
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--tls-cert-file", "server.pem", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem",
         "--tls-auth-clients", "no", "--user", "default", "off", "--user", "easel", *ACL.split(), "--dir", str(folder)],
        cwd=folder, stdout=log, stderr=log, preexec_fn=ends_with_parent,
    )  # fmt: skip
    return server, port


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make the test certificates")
@pytest.mark.slow
async def test_local_and_remote_workers_serve_one_bot_through_tls_and_an_acl_user(
    cluster: Cluster, tmp_path: Path
) -> None:
    from common.worker_config import WorkerConfig

    server, port = await asyncio.to_thread(start_tls_redis, tmp_path)
    url = f"rediss://easel:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
    cluster.folders["tls"] = cluster.folders["b"]
    worker = cluster.start_worker("tls", url)
    db = await open_database(tmp_path / "tls.sqlite3")
    service = GenerationService(
        db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_batch_images=1), broker_url=url
    )
    wrong = GenerationService(db, [], Limits(), broker_url=url.replace("s3cret", "guess"))
    try:
        await service.start(ready_within=60)
        await eventually(lambda: len(service.status().workers) == 2, "the remote worker joined")
        handles = [await queue_unchecked(service, request(f"tls{i}", steps=30), cluster.checkpoints["sd1"]) for i in range(2)]
        for handle in handles:
            assert isinstance((await finished(handle))[-1], Finished)
        assert sorted(h.job.device == "cpu" for h in handles) == [False, True]  # one here, one remote
        await wrong.start(wait=False)
        await eventually(lambda: "unreachable" in wrong.status().broker, "a wrong password is refused")
        assert "s3cret" not in wrong.status().broker and "guess" not in wrong.status().broker
    finally:
        await service.close()
        await wrong.close()
        await db.close()
        worker.terminate()
        worker.wait(10)
        server.terminate()
        server.wait(10)


@pytest.mark.slow
async def test_a_worker_with_an_empty_folder_fetches_what_it_lacks_when_no_holder_is_idle(
    cluster: Cluster, tiny_loras: Path
) -> None:
    """The scheduler's rule (bot/generation/service.py `_choose`): a holder when one is idle; a
    fetching worker only when none is. Worker f joins with an empty folder and --fetch-missing; only
    a holds SDXL. f gets the checkpoint and a LoRA from the bot's share by hash, runs the job, and
    holds them from then on."""
    service, sdxl = cluster.service, cluster.checkpoints["sdxl"]
    cluster.folders["f"] = cluster.tmp / "models-f"
    cluster.folders["f"].mkdir()
    cluster.start_worker("f", None, "--fetch-missing", "--fetch-budget-gb", "0.02")  # 20 MB: SDXL's 13 fit, SD2's 32 do not
    fetched = cluster.folders["f"] / "fetched"
    try:
        await cluster.joined("f")
        holder, fetcher = cluster.worker_id("a"), cluster.worker_id("f")
        status = service.status()
        [shown] = [w for w in status.workers if w.worker_id == fetcher]
        assert "fetches the model files it lacks" in describe(shown)[1]  # as /status and `bot.py workers` say it
        assert "; model files shared at http://127.0.0.1:" in status.broker
        # Both idle: the holder runs it, and nothing is fetched.
        long = await queue_unchecked(service, request("fetch-long", steps=150, width=128, height=128), sdxl)
        async for event in long.events():
            if isinstance(event, Progress):
                break
        assert holder in long.job.device and not any(fetched.glob("*.safetensors"))
        # The holder busy: the next job, with a LoRA nobody holds, goes to the fetcher, which fetches both.
        lora_file = tiny_loras / "lora-sdxl.safetensors"
        lora_sha = hashlib.sha256(lora_file.read_bytes()).hexdigest()
        lora = LoraUse("lora-sdxl", str(lora_file), lora_sha, lora_sha[:12], 0.5, 0.5)
        spec = validate(request("fetch-lora", prompt="a fox <lora:lora-sdxl:0.5>"), sdxl, service.limits, loras=(lora,))
        events = await finished(await service.admit(spec), 120)
        assert isinstance(events[-1], Finished), events[-1]
        assert fetcher in events[-1].job.device and "lora-sdxl" in events[-1].job.images[0].infotext
        for sha in (sdxl.sha256, lora_sha):  # fetched whole: the name is the hash it was checked against
            assert hashlib.sha256((fetched / f"{sha}.safetensors").read_bytes()).hexdigest() == sha
        await eventually(lambda: {sdxl.sha256, lora_sha} <= service._remote[fetcher].holds, "the fetcher says it holds both")
        sizes = [os.path.getsize(path) for path in (sdxl.path, lora_file)]  # noqa: ASYNC240
        assert service.metrics.shared_bytes._value.get() == sum(sizes)
        await service.cancel(long.job.id)  # it kept the holder busy; its picture is not wanted
        await finished(long)
        log = (cluster.tmp / "worker-f.log").read_text()
        assert "fetched checkpoint tiny-sdxl" in log and "fetched LoRA lora-sdxl" in log
        assert "?w=" not in log  # addresses carry tokens: logged by host only
        # A fetch that fails (SD2 is over f's budget; nobody holds it): the job goes back in the queue,
        # f is not sent it again, and with no one else able to run it, it fails saying why.
        events = await finished(await queue_unchecked(service, request("fetch-too-big"), cluster.checkpoints["sd2"]))
        assert [type(e).__name__ for e in events].count("Started") == 1 and isinstance(events[-1], Failed)
        assert "no GPU worker can run this job" in events[-1].message
        assert f"worker {fetcher}: checkpoint tiny-sd2 is 32.2 MB, more than this worker's fetch budget of 20.0 MB" in events[-1].message
    finally:
        process = cluster.workers.pop("f")
        process.terminate()
        process.wait(10)
        await eventually(lambda: all(w.pid != process.pid for w in service.status().workers), "f presumed gone")
