"""A queue that is fair between requesters: round-robin across users, with per-user and global caps.

Dispatch order is one job per user in turn (a user who has just been served goes to the back), so
one user's ten jobs cannot starve another's one. `pop_batch` takes the next job in that order plus
compatible jobs (same checkpoint, size, steps, sampler…) from anyone, up to an image budget.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from bot.generation.jobs import Job
from bot.rules.limits import GenerationError, Limits


class FairQueue:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._users: OrderedDict[str, deque[Job]] = OrderedDict()  # rotation order: next user first

    def __len__(self) -> int:
        return sum(len(q) for q in self._users.values())

    def __contains__(self, job_id: str) -> bool:
        return any(job.id == job_id for q in self._users.values() for job in q)

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

    def push_front(self, job: Job) -> None:
        """A job taken back from a worker that was lost: first in the queue again, without a room
        check (it had its place already)."""
        self._users.setdefault(job.requester_id, deque()).appendleft(job)
        self._users.move_to_end(job.requester_id, last=False)

    def remove(self, job_id: str) -> Job | None:
        for user, jobs in self._users.items():
            for job in jobs:
                if job.id == job_id:
                    jobs.remove(job)
                    if not jobs:
                        del self._users[user]
                    return job
        return None

    def order(self) -> list[Job]:
        """Every queued job in the order it will be dispatched (absent batching)."""
        queues = [list(q) for q in self._users.values()]
        out: list[Job] = []
        depth = 0
        while len(out) < len(self):
            out.extend(q[depth] for q in queues if depth < len(q))
            depth += 1
        return out

    def position(self, job_id: str) -> int | None:
        for index, job in enumerate(self.order(), start=1):
            if job.id == job_id:
                return index
        return None

    def peek(self) -> Job | None:
        for jobs in self._users.values():
            return jobs[0]
        return None

    def pop_batch(self, max_images: int, head_id: str | None = None) -> list[Job]:
        """The next job in fair order (or the queued job `head_id`, run ahead of a head that must wait
        for a busy worker) plus compatible queued jobs, up to `max_images` images."""
        order = self.order()
        if not order:
            return []
        head = next((job for job in order if job.id == head_id), order[0])
        batch, images = [head], head.image_count
        for job in order:
            if job is not head and job.batch_key == head.batch_key and images + job.image_count <= max_images:
                batch.append(job)
                images += job.image_count
        for job in batch:
            self.remove(job.id)
        # The head's user was just served: to the back of the rotation.
        if head.requester_id in self._users:
            self._users.move_to_end(head.requester_id)
        return batch
