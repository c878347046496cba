"""The generation service with a real worker process on a tiny checkpoint.

One worker serves the module (starting one costs seconds of imports); the shutdown test starts a
service of its own, so no test depends on running last.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.generation.checkpoint_ref import CheckpointRef, resolve_checkpoint
from bot.generation.jobs import Cancelled, Failed, Finished, JobState, Loading, Progress, Queued, Started
from bot.generation.service import GenerationService, JobHandle
from bot.rules.limits import GenerationError, GenerationRequest, Limits
from common.worker_config import WorkerConfig
from tests.a1111_infotext import parse_generation_parameters as parse_infotext
from tests.helpers import blocker, queue_unchecked

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(
    tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[GenerationService, CheckpointRef]]:
    db = await open_database(tmp_path_factory.mktemp("service") / "easel.sqlite3")
    registry = CheckpointRegistry(db, tiny_dir)
    checkpoint = await resolve_checkpoint(registry, str(tiny_dir / "tiny-sd1.safetensors"), allow_path=True)
    limits = Limits(max_queued_per_user=12, max_batch_images=4)
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], limits, preview_every=2)
    await service.start()
    yield service, checkpoint
    await service.close()
    await db.close()


def request(user: str = "u1", **values) -> GenerationRequest:
    return GenerationRequest.of(**({"prompt": "a lighthouse", "requester_id": user, "steps": 3, "seed": 5} | values))


async def collect(handle: JobHandle) -> list[object]:
    return [event async for event in handle.events()]


async def test_job_runs_reports_and_is_recorded(setup) -> None:
    service, checkpoint = setup
    handle = await queue_unchecked(service, request(negative="blurry", count=2, seed=11), checkpoint)
    events = await collect(handle)
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Started" and kinds[-1] == "Finished"
    assert "Loading" in kinds and kinds.count("Progress") == 3
    job = events[-1].job
    assert [i.seed for i in job.images] == [11, 12]
    image = Image.open(io.BytesIO(job.images[1].png))
    prompt, negative, params = parse_infotext(image.info["parameters"])
    assert (prompt, negative, params["Seed"], params["Model hash"]) == (
        "a lighthouse",
        "blurry",
        "12",
        checkpoint.autov2,
    )
    await service.flush()
    record = await service.get_job(job.id)
    assert record.state is JobState.DONE and record.seeds == [11, 12] and len(record.infotexts) == 2
    assert record.row["inference_seconds"] > 0 and record.row["device"] == "cpu"


async def test_second_job_finds_the_checkpoint_loaded(setup) -> None:
    service, checkpoint = setup
    await collect(await queue_unchecked(service, request(steps=2), checkpoint))
    events = await collect(await queue_unchecked(service, request(steps=4), checkpoint))
    assert next(e for e in events if isinstance(e, Loading)).cache == "device"


async def test_fairness_one_users_ten_jobs_do_not_starve_anothers_one(setup) -> None:
    service, checkpoint = setup
    block = await blocker(service, checkpoint)
    finished: list[str] = []

    async def track(handle: JobHandle, label: str) -> None:
        await handle.wait()
        finished.append(label)

    # Distinct step counts so nothing is batched: this tests the order alone.
    a_handles = [await queue_unchecked(service, request("A", steps=2 + i), checkpoint) for i in range(10)]
    b_handle = await queue_unchecked(service, request("B", steps=20), checkpoint)
    positions = {h.job.id: service.position(h.job.id) for h in [*a_handles, b_handle]}
    assert positions[b_handle.job.id] == 2
    tasks = [asyncio.create_task(track(h, f"A{i}")) for i, h in enumerate(a_handles)]
    tasks.append(asyncio.create_task(track(b_handle, "B")))
    await block.release()
    await asyncio.gather(*tasks)
    assert finished.index("B") == 1, finished


async def test_compatible_waiting_jobs_are_batched(setup) -> None:
    service, checkpoint = setup
    block = await blocker(service, checkpoint)
    handles = [
        await queue_unchecked(service, request(f"user{i}", prompt=f"prompt {i}", seed=100 + i), checkpoint)
        for i in range(3)
    ]
    await block.release()
    results = [await collect(h) for h in handles]
    for i, events in enumerate(results):
        started = next(e for e in events if isinstance(e, Started))
        assert started.batch_size == 3
        job = events[-1].job
        assert [img.seed for img in job.images] == [100 + i]
        assert parse_infotext(job.images[0].infotext)[0] == f"prompt {i}"


async def test_queued_jobs_hear_their_position(setup) -> None:
    """A waiting job hears its place when it is queued, and again, with its expected wait, when its
    front end reads it (a poll) after it moved; nothing is pushed to every waiting job per change."""
    service, checkpoint = setup
    block = await blocker(service, checkpoint)
    first = await queue_unchecked(service, request("p1", steps=5), checkpoint)
    second = await queue_unchecked(service, request("p2", steps=6), checkpoint)
    third = await queue_unchecked(service, request("p3", steps=7), checkpoint)
    assert [(await h.next_event()).position for h in (first, second, third)] == [1, 2, 3]
    assert third.queued().position == 3 and third.queued().eta_seconds is not None  # measured by the blocker's run
    await service.cancel(first.job.id)
    said = await second.next_event(poll=0.01)  # read when asked: moved up, with its wait
    assert isinstance(said, Queued) and said.position == 1 and said.eta_seconds is not None
    assert second._events.empty() and third._events.empty()  # the cancel announced nothing to anyone
    await block.release()
    second_events, third_events = await collect(second), await collect(third)
    assert isinstance(second_events[-1], Finished) and not any(isinstance(e, Queued) for e in second_events)
    assert isinstance(third_events[-1], Finished)


async def test_cancel_queued_job(setup) -> None:
    service, checkpoint = setup
    block = await blocker(service, checkpoint)
    queued = await queue_unchecked(service, request("q"), checkpoint)
    with pytest.raises(GenerationError, match="only the person who asked"):
        await service.cancel(queued.job.id, requester_id="someone-else")
    assert await service.cancel(queued.job.id, requester_id="q") == "cancelled"
    events = await collect(queued)
    assert isinstance(events[-1], Cancelled) and not any(isinstance(e, Started) for e in events)
    with pytest.raises(GenerationError, match="already ended"):
        await service.cancel(queued.job.id)
    await block.release()
    await block.wait()


async def test_cancel_running_job_stops_between_steps(setup) -> None:
    service, checkpoint = setup
    block = await blocker(service, checkpoint)
    assert await service.cancel(block.job.id, requester_id="blocker") == "cancelling"
    block.held.resume()  # the cancel waits in the pipe: it lands between two steps
    events = await collect(block.handle)
    assert isinstance(events[-1], Cancelled)
    steps_run = max((e.step for e in events if isinstance(e, Progress)), default=1)
    assert steps_run < 150  # it stopped between steps, long before the end
    await service.flush()
    assert (await service.get_job(block.job.id)).state is JobState.CANCELLED


async def test_bad_requests_are_refused_before_queueing(setup) -> None:
    service, checkpoint = setup
    with pytest.raises(GenerationError, match="prompt is empty"):
        await queue_unchecked(service, request(prompt=" "), checkpoint)
    with pytest.raises(GenerationError, match="unknown sampler"):
        await queue_unchecked(service, request(sampler="Nope"), checkpoint)
    assert service.status().queued == 0


async def test_concurrent_requests_cannot_slip_past_the_cooldown_or_the_queue_limit(setup) -> None:
    """Checked and recorded under one lock: the check used to run before an await, the record after."""
    service, checkpoint = setup
    service.cooldowns.seconds = 60
    try:
        results = await asyncio.gather(
            *(queue_unchecked(service, request("racer", steps=1), checkpoint) for _ in range(5)), return_exceptions=True
        )
    finally:
        service.cooldowns.seconds = 0
    accepted = [r for r in results if isinstance(r, JobHandle)]
    refused = [r for r in results if isinstance(r, GenerationError)]
    assert len(accepted) == 1 and len(refused) == 4 and all("slow down" in str(e) for e in refused)
    await collect(accepted[0])

    running = await blocker(service, checkpoint)
    results = await asyncio.gather(
        *(queue_unchecked(service, request("crowd", steps=1), checkpoint) for _ in range(20)), return_exceptions=True
    )
    accepted = [r for r in results if isinstance(r, JobHandle)]
    assert len(accepted) == service.limits.max_queued_per_user
    assert all("you already have" in str(r) for r in results if not isinstance(r, JobHandle))
    for handle in accepted:
        await service.cancel(handle.job.id)
    await running.release()
    await asyncio.gather(*(collect(h) for h in [*accepted, running.handle]))


async def test_killed_worker_fails_its_job_and_comes_back(setup) -> None:
    service, checkpoint = setup
    handle = (await blocker(service, checkpoint)).handle  # held: killed mid-job, whatever the speed
    worker = service._workers[0]
    old_pid = worker.pid
    worker.kill()
    events = await asyncio.wait_for(collect(handle), timeout=30)  # a hang guard, not a measurement
    assert isinstance(events[-1], Failed)
    assert "stopped unexpectedly" in events[-1].message and handle.job.id in events[-1].message
    # The next job waits for the restarted worker and succeeds.
    after = await queue_unchecked(service, request(steps=2), checkpoint)
    final = (await asyncio.wait_for(collect(after), timeout=120))[-1]
    assert isinstance(final, Finished)
    assert worker.pid != old_pid
    await service.flush()
    assert (await service.get_job(handle.job.id)).state is JobState.FAILED


@pytest.mark.slow
async def test_close_interrupts_unfinished_jobs(tiny_dir: Path, tmp_path: Path) -> None:
    """Jobs never stay 'queued' or 'running' forever. A service of its own, so test order does not matter."""
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        registry = CheckpointRegistry(db, tiny_dir)
        checkpoint = await resolve_checkpoint(registry, str(tiny_dir / "tiny-sd1.safetensors"), allow_path=True)
        service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=4))
        await service.start()
        running = await blocker(service, checkpoint)
        queued = await queue_unchecked(service, request("later"), checkpoint)
        running.held.resume()  # a running job, closed under it
        await service.close()
        for handle in (running.handle, queued):
            events = await collect(handle)
            assert isinstance(events[-1], Failed) and "shutting down" in events[-1].message
        for handle in (running.handle, queued):
            assert (await service.get_job(handle.job.id)).state is JobState.INTERRUPTED
        with pytest.raises(GenerationError, match="shutting down"):
            await queue_unchecked(service, request(), checkpoint)
    finally:
        await db.close()


