"""A queue that is fair between requesters: round-robin across users, with per-user and global caps.

Dispatch order is one job per user in turn (a user who has just been served goes to the back), so
one user's ten jobs cannot starve another's one. `pop_batch` takes the next job in that order plus
compatible jobs (same checkpoint, size, steps, sampler…) from anyone, up to an image budget.

A job's place is computed from the users' queue lengths, not by walking the order: a job at depth d
of its user's queue has ahead of it d of its own, min(L, d + 1) of each user before its user in the
rotation and min(L, d) of each user after — O(users) for one job, nothing per event.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterator

from bot.generation.jobs import Job
from bot.rules.limits import GenerationError, Limits


class FairQueue:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._users: OrderedDict[str, deque[Job]] = OrderedDict()  # rotation order: next user first
        self._jobs: dict[str, Job] = {}
        self._keys: Counter[tuple[object, ...]] = Counter()  # waiting jobs by batch key: when to stop looking
        self.version = 0  # counts changes: whoever keeps a view of the order knows when it is stale

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def queued_for(self, user: str) -> int:
        return len(self._users.get(user, ()))

    def check_room(self, user: str, images: int = 1) -> None:
        """Raise GenerationError (with what to do) if `user` may not queue another job now."""
        if len(self) >= self.limits.max_queue:
            raise GenerationError(f"the queue is full ({self.limits.max_queue} jobs); try again in a few minutes")
        if self.queued_for(user) >= self.limits.max_queued_per_user:
            raise GenerationError(
                f"you already have {self.queued_for(user)} jobs waiting (the limit is "
                f"{self.limits.max_queued_per_user}); wait for one to start or cancel one"
            )

    def push(self, job: Job) -> None:
        self.check_room(job.requester_id)
        self._users.setdefault(job.requester_id, deque()).append(job)
        self._jobs[job.id] = job
        self._keys[job.batch_key] += 1
        self.version += 1

    def push_front(self, job: Job) -> None:
        """A job taken back from a worker that was lost: first in the queue again, without a room
        check (it had its place already)."""
        self._users.setdefault(job.requester_id, deque()).appendleft(job)
        self._users.move_to_end(job.requester_id, last=False)
        self._jobs[job.id] = job
        self._keys[job.batch_key] += 1
        self.version += 1

    def remove(self, job_id: str) -> Job | None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        jobs = self._users[job.requester_id]
        jobs.remove(job)
        if not jobs:
            del self._users[job.requester_id]
        self._keys[job.batch_key] -= 1
        if not self._keys[job.batch_key]:
            del self._keys[job.batch_key]
        self.version += 1
        return job

    def order(self) -> list[Job]:
        """Every queued job in the order it will be dispatched (absent batching)."""
        return list(self._fair())

    def _fair(self) -> Iterator[Job]:
        """The fair order, made as it is read: one job per user in turn, depth by depth."""
        queues = list(self._users.values())
        depth = 0
        while queues:
            queues = [q for q in queues if depth < len(q)]
            yield from (q[depth] for q in queues)
            depth += 1

    def position(self, job_id: str) -> int | None:
        """The job's place in the fair order (1 = next), from the queue lengths: O(users)."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        depth = self._users[job.requester_id].index(job)
        ahead, before = depth, True
        for user, jobs in self._users.items():
            if user == job.requester_id:
                before = False
            else:
                ahead += min(len(jobs), depth + 1 if before else depth)
        return ahead + 1

    def peek(self) -> Job | None:
        for jobs in self._users.values():
            return jobs[0]
        return None

    def pop_batch(self, max_images: int, head_id: str | None = None) -> list[Job]:
        """The next job in fair order (or the queued job `head_id`, run ahead of a head that must wait
        for a busy worker) plus compatible queued jobs, up to `max_images` images."""
        head = self._jobs.get(head_id or "") or self.peek()
        if head is None:
            return []
        batch, images = [head], head.image_count
        # In fair order, until the batch is full or every waiting job of its key has been seen: a
        # dispatch reads only as far into the queue as its batch reaches.
        others = self._keys[head.batch_key] - 1
        for job in self._fair():
            if others <= 0 or images >= max_images:
                break
            if job is head or job.batch_key != head.batch_key:
                continue
            others -= 1
            if images + job.image_count <= max_images:
                batch.append(job)
                images += job.image_count
        for job in batch:
            self.remove(job.id)
        # The head's user was just served: to the back of the rotation.
        if head.requester_id in self._users:
            self._users.move_to_end(head.requester_id)
            self.version += 1
        return batch
