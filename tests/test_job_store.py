"""Job records survive a restart; jobs a dead bot left open are marked interrupted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.db import open_database, transaction
from bot.generation.jobs import JobState
from bot.generation.store import JobStore
from tests.helpers import make_job


async def test_open_jobs_from_a_previous_run_become_interrupted(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        store = JobStore(db)
        running, queued, done = make_job("a"), make_job("b"), make_job("c")
        for job, state in ((running, JobState.RUNNING), (queued, JobState.QUEUED), (done, JobState.DONE)):
            job.state = state
            await store.insert(job)
            await store.save_state(job)
        assert await store.mark_interrupted() == 2
        assert (await store.get(running.id)).state is JobState.INTERRUPTED
        assert (await store.get(queued.id)).row["error"] == "the bot stopped before this job finished"
        record = await store.get(done.id)
        assert record.state is JobState.DONE
        assert record.to_dict()["seeds"] == [1] and record.row["prompt"] == "a cat"
    finally:
        await db.close()


async def test_a_state_the_database_refused_is_written_with_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while recording a finished job: the row must not stay 'running'."""
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        store = JobStore(db)
        job = make_job("a")
        await store.insert(job)
        job.state = JobState.RUNNING
        await store.save_state(job)
        real_write = store._write_state

        async def disk_full(job_to_write) -> None:  # the write goes through, then the commit fails
            async with transaction(db):
                await db.execute("UPDATE jobs SET state = 'scribbled' WHERE id = ?", (job_to_write.id,))
                raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store, "_write_state", disk_full)
        job.state = JobState.DONE
        await store.save_state(job)  # logged, not raised: the job itself finished
        assert (await store.get(job.id)).state is JobState.RUNNING  # the failed transaction was rolled back
        monkeypatch.setattr(store, "_write_state", real_write)
        other = make_job("b")
        await store.insert(other)
        await store.save_state(other)  # the next write that succeeds carries the lost one along
        assert (await store.get(job.id)).state is JobState.DONE
    finally:
        await db.close()
