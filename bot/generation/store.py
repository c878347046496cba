"""Job records in SQLite: every job can be looked up and reproduced by id, across restarts."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiosqlite

from bot.db import transaction
from bot.generation.jobs import Job, JobState
from bot.rules.policy import readable_score
from common.parameters import Parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: what was asked, what was used, and how it ended."""

    row: dict[str, Any]

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def state(self) -> JobState:
        return JobState(self.row["state"])

    @property
    def seeds(self) -> list[int]:
        return json.loads(self.row["seeds_json"])

    @property
    def parameters(self) -> Parameters:
        """What shaped the job's pictures, final (the first seed; the others count up from it)."""
        return Parameters.from_json(self.row["parameters_json"])

    @property
    def infotexts(self) -> list[str]:
        return json.loads(self.row["infotexts_json"] or "[]")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.row.items() if not k.endswith("_json")}
        return {**out, "seeds": self.seeds, "infotexts": self.infotexts, "parameters": asdict(self.parameters)}


_NOTE_COLUMNS = ("safety_json", "message_id")
MAX_NOTES = 10_000


class JobStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # Job states whose write failed (disk full, a locked file): written again with the next
        # write that succeeds, and at shutdown. What is still unwritten at a crash is settled at the
        # next start (mark_interrupted), so a row never stays queued or running.
        self._unsaved: dict[str, Job] = {}
        # A delivered job's notes (safety verdicts, message id) whose write failed: the same.
        self._notes: dict[tuple[str, str], str] = {}

    async def insert(self, job: Job) -> None:
        spec, request, p = job.spec, job.spec.request, job.spec.parameters
        async with transaction(self._db) as db:
            await db.execute(
                "INSERT INTO jobs (id, state, requester_id, requester_name, guild_id, channel_id, checkpoint_name, "
                "checkpoint_sha256, prompt, negative, width, height, steps, cfg, sampler, schedule, clip_skip, seeds_json, "
                "created_at, init_image_sha256, mask_sha256, vae_sha256, parameters_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.state.value,
                    request.requester_id,
                    request.requester_name,
                    request.guild_id,
                    request.channel_id,
                    spec.checkpoint.name,
                    spec.checkpoint.sha256,
                    p.prompt.strip(),
                    p.negative,
                    spec.width,
                    spec.height,
                    p.steps,
                    p.cfg,
                    p.sampler,
                    p.schedule,
                    p.clip_skip,
                    json.dumps(list(spec.seeds)),
                    job.created_at,
                    p.init_image,
                    p.mask_image,
                    spec.vae.sha256 if spec.vae else None,
                    p.to_json(),
                ),
            )

    async def save_state(self, job: Job) -> None:
        self._unsaved[job.id] = job
        if await self.write_unsaved():
            await self.write_notes()

    async def write_unsaved(self) -> bool:
        """Write every job state not yet recorded; False if the database still refuses."""
        for job_id, job in list(self._unsaved.items()):
            try:
                await self._write_state(job)
            except sqlite3.Error as e:  # rolled back by transaction(): later writes start clean
                log.error("job %s: could not record state %s (%s); will retry", job_id, job.state.value, e)
                return False
            if self._unsaved.get(job_id) is job:
                del self._unsaved[job_id]
        return True

    async def _write_state(self, job: Job) -> None:
        async with transaction(self._db) as db:
            await db.execute(
                "UPDATE jobs SET state = ?, error = ?, device = ?, batch_size = ?, started_at = ?, finished_at = ?, "
                "load_seconds = ?, inference_seconds = ?, infotexts_json = ? WHERE id = ?",
                (
                    job.state.value,
                    job.error,
                    job.device,
                    job.batch_size,
                    job.started_at,
                    job.finished_at,
                    job.load_seconds,
                    job.inference_seconds,
                    json.dumps([image.infotext for image in job.images]) if job.images else None,
                    job.id,
                ),
            )

    async def set_safety(self, job_id: str, scores: list[float | None], verdicts: list[str]) -> None:
        """What the picture check found and what was done with each picture (posted, spoilered,
        withheld); a score that was missing or unreadable is kept as null."""
        kept = [readable_score(score) for score in scores]
        await self._note(job_id, "safety_json", json.dumps({"scores": kept, "verdicts": verdicts}))
        for score, verdict in zip(kept, verdicts, strict=True):
            if score is None or verdict != "post" or score >= 0.5:
                shown = "none" if score is None else f"{score:.2f}"
                log.info("job %s picture check: score %s, %s", job_id, shown, verdict)

    async def safety_counts(self) -> dict[str, int]:
        """Pictures spoilered and withheld by the picture check, over every recorded job."""
        counts = {"spoiler": 0, "withhold": 0}
        async with self._db.execute("SELECT safety_json FROM jobs WHERE safety_json IS NOT NULL") as cur:
            async for (raw,) in cur:
                for verdict in json.loads(raw).get("verdicts", []):
                    if verdict in counts:
                        counts[verdict] += 1
        return counts

    async def set_message(self, job_id: str, message_id: str) -> None:
        await self._note(job_id, "message_id", message_id)

    async def _note(self, job_id: str, column: str, value: str) -> None:
        """Bookkeeping of a delivery (its verdicts, its message): never in the way of the delivery.
        A write the database refuses (disk full) is logged and tried again with every later write."""
        if column not in _NOTE_COLUMNS:
            raise ValueError(f"not a bookkeeping column: {column}")
        self._notes[(job_id, column)] = value
        while len(self._notes) > MAX_NOTES:  # a database that never comes back: the oldest go
            dropped = next(iter(self._notes))
            del self._notes[dropped]
            log.error("job %s: gave up recording %s", *dropped)
        await self.write_notes()

    async def write_notes(self) -> bool:
        """Write every delivery note not yet recorded; False if the database still refuses."""
        for (job_id, column), value in list(self._notes.items()):
            try:
                async with transaction(self._db) as db:
                    await db.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (value, job_id))
            except sqlite3.Error as e:  # rolled back: later writes start clean
                log.error("job %s: could not record %s (%s); will retry with the next write", job_id, column, e)
                return False
            if self._notes.get((job_id, column)) == value:
                del self._notes[(job_id, column)]
        return True

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return JobRecord(dict(row)) if row else None

    async def mark_interrupted(self) -> int:
        """Jobs a previous run left queued or running did not finish: say so instead of leaving them open."""
        async with transaction(self._db) as db:
            cur = await db.execute(
                "UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE state IN (?, ?)",
                (
                    JobState.INTERRUPTED.value,
                    "the bot stopped before this job finished",
                    time.time(),
                    JobState.QUEUED.value,
                    JobState.RUNNING.value,
                ),
            )
        return cur.rowcount
