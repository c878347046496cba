"""Signed frames through a real redis-server and a real remote worker (`--key-file`) serving a bot with
EASEL_WORKER_KEYS: jobs run; a forged result for a running job (unsigned, wrongly signed, or signed
with another machine's key) is refused and counted while the real one arrives; a replayed frame and
a frame of an ended session are refused; the worker takes no command the bot did not sign."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from bot.generation.jobs import Finished
from common.frame_signing import TO_BOT, TO_WORKER, Signer
from common.protocol import (
    EVENTS_STREAM,
    BatchProgress,
    JobDone,
    JobPart,
    RunBatch,
    broker_entry,
    commands_stream,
    encode,
)
from tests.helpers import eventually, queue_unchecked
from tests.test_remote_workers import REDIS_SERVER, Cluster, finished, request, running_cluster, started

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (./dev test installs it as root)"),
]
KEY, OTHER = b"a" * 64, b"b" * 64


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    tmp = tmp_path_factory.mktemp("signed")
    (tmp / "key").write_text(f"box-1 {KEY.decode()}\n")
    keys = {"box-1": (KEY,), "box-2": (OTHER,)}
    workers = {"a": {"sd1.safetensors": "sd1"}}
    async with running_cluster(tmp, tiny_dir, workers, extra={"a": ("--key-file", str(tmp / "key"))}, worker_keys=keys) as made:
        yield made


def signed(signer: Signer, key: bytes, name: str, worker: str, message: object, sender: str | None = None) -> dict[str, bytes]:
    return signer.fields(name, key, worker, sender or worker, encode(message))


async def test_a_forged_result_is_refused_and_the_real_one_arrives(cluster: Cluster) -> None:
    service = cluster.service
    client = aioredis.Redis.from_url(cluster.redis.url)
    refused = service._broker.refused
    handle, running, batch_id = await started(cluster, "forged")
    worker = running.worker_id
    fake = JobDone(batch_id, handle.job.id, (), "cpu", 0.0, 0.0, "device", 1)
    await client.xadd(EVENTS_STREAM, broker_entry(worker, fake))  # unsigned, in its name
    await client.xadd(EVENTS_STREAM, signed(Signer(TO_BOT), b"x" * 64, "box-1", worker, fake))  # a wrong key
    await client.xadd(EVENTS_STREAM, signed(Signer(TO_BOT), OTHER, "box-2", worker, fake))  # another machine's key
    [*_, done] = await finished(handle)
    assert isinstance(done, Finished) and len(done.job.images) == 1  # the real result
    await eventually(lambda: service._broker.refused == refused + 3, "the three forgeries refused")
    assert worker in {w.worker_id for w in service.status().workers}  # its own frames still go through
    await client.aclose()


async def test_a_replayed_frame_and_an_ended_session_are_refused(cluster: Cluster) -> None:
    """A key holder's frames (here the test's own, for a worker id of its own, so the real worker's
    session is left alone): the second copy of one, and one of a session that was replaced, are refused."""
    service = cluster.service
    client = aioredis.Redis.from_url(cluster.redis.url)
    refused = service._broker.refused
    progress = BatchProgress("no-such-batch", 1, 4, 0.1, 10.0)  # about no batch of this bot: heard and dropped
    old, new = Signer(TO_BOT), Signer(TO_BOT)
    from_old = signed(old, KEY, "box-1", "replayer-1", progress)
    first = signed(new, KEY, "box-1", "replayer-1", progress)
    await client.xadd(EVENTS_STREAM, signed(old, KEY, "box-1", "replayer-1", progress))
    await client.xadd(EVENTS_STREAM, first)
    await client.xadd(EVENTS_STREAM, first)  # replayed
    await client.xadd(EVENTS_STREAM, from_old)  # the ended session's
    await eventually(lambda: service._broker.refused == refused + 2, "the replay and the ended session refused")
    await client.aclose()


async def test_the_worker_takes_no_command_the_bot_did_not_sign(cluster: Cluster) -> None:
    client = aioredis.Redis.from_url(cluster.redis.url)
    worker = cluster.worker_id("a")
    load = cluster.checkpoints["sd1"].load_request()
    bogus = RunBatch.of(
        batch_id="unsignedbatch", load=load, jobs=(JobPart("unsignedjob", "x", "", (1,)),), width=64, height=64, steps=2, cfg=7.0,
        sampler="Euler", schedule="Automatic",
    )  # fmt: skip
    await client.xadd(commands_stream(worker), broker_entry("bot", bogus))
    wrong = dataclasses.replace(bogus, batch_id="wrongkeybatch")
    await client.xadd(commands_stream(worker), signed(Signer(TO_WORKER), OTHER, "box-1", worker, wrong, "bot"))
    log = cluster.tmp / "worker-a.log"
    await eventually(lambda: log.read_text().count("refused a command entry") >= 2, "both forged commands refused")
    assert "unsigned" in log.read_text() and "not signed with the key 'box-1'" in log.read_text()
    assert "unsignedbatch" not in {w.batch.batch_id for w in cluster.service._workers if w.batch}
    # and the worker still serves the bot's own, signed commands
    handle = await queue_unchecked(cluster.service, request("after"), cluster.checkpoints["sd1"])
    assert isinstance((await finished(handle))[-1], Finished)
    await client.aclose()
