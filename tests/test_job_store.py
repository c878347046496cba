"""Job records survive a restart; jobs a dead bot left open are marked interrupted."""

from __future__ import annotations

from pathlib import Path

from bot.db import open_database
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
