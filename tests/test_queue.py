"""The fair queue: round-robin between users, caps, and batching of compatible jobs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.generation.queue import FairQueue
from bot.rules.limits import GenerationError, Limits
from tests.helpers import make_job


def test_one_users_ten_jobs_do_not_starve_anothers_one() -> None:
    queue = FairQueue(Limits(max_queued_per_user=20))
    a_jobs = [make_job("A", steps=4 + i) for i in range(10)]
    for job in a_jobs:
        queue.push(job)
    b_job = make_job("B", steps=50)
    queue.push(b_job)
    assert queue.position(b_job.id) == 2
    dispatched = [queue.pop_batch(4)[0] for _ in range(3)]
    assert dispatched == [a_jobs[0], b_job, a_jobs[1]]


def test_round_robin_across_three_users() -> None:
    queue = FairQueue(Limits(max_queued_per_user=5))
    jobs = {u: [make_job(u, steps=s) for s in (4, 5, 6)] for u in "ABC"}
    for u in "ABC":
        for job in jobs[u]:
            queue.push(job)
    order = [queue.pop_batch(1)[0].requester_id for _ in range(9)]
    assert order == list("ABCABCABC")


def test_caps_say_what_to_do() -> None:
    queue = FairQueue(Limits(max_queued_per_user=2, max_queue=3))
    queue.push(make_job("A"))
    queue.push(make_job("A", steps=5))
    with pytest.raises(GenerationError, match="already have 2 jobs waiting"):
        queue.push(make_job("A", steps=6))
    queue.push(make_job("B"))
    with pytest.raises(GenerationError, match="queue is full"):
        queue.push(make_job("C"))


def test_batches_compatible_jobs_up_to_the_image_budget() -> None:
    queue = FairQueue(Limits(max_queued_per_user=5))
    first = make_job("A", count=2)
    other_checkpoint = make_job("B", sha="b" * 64)
    same = make_job("C", prompt="a dog")
    too_many = make_job("D", count=2)
    for job in (first, other_checkpoint, same, too_many):
        queue.push(job)
    batch = queue.pop_batch(3)
    assert batch == [first, same]  # same checkpoint, size, steps, sampler; 3 images in all
    assert queue.order() == [other_checkpoint, too_many]


def test_remove() -> None:
    queue = FairQueue(Limits())
    job = make_job("A")
    queue.push(job)
    assert queue.remove(job.id) is job
    assert len(queue) == 0 and queue.remove(job.id) is None


def test_cooldown_names_the_wait() -> None:
    from bot.rules.cooldowns import Cooldowns

    now = [100.0]
    cooldowns = Cooldowns(10, clock=lambda: now[0])
    cooldowns.check("a")
    cooldowns.record("a")
    now[0] = 103.2
    with pytest.raises(GenerationError, match="ask again in 7 s"):
        cooldowns.check("a")
    cooldowns.check("b")  # others are not affected
    now[0] = 110.0
    cooldowns.check("a")


def test_a_job_run_ahead_of_a_waiting_head_leaves_the_head_first_and_its_turn_kept() -> None:
    """pop_batch(head_id): the service runs a job behind a head that only a busy worker can run; the
    head stays first, the served job's user goes to the back of the rotation."""
    queue = FairQueue(Limits(max_queued_per_user=5))
    a1, b1, c1, b2 = make_job("A", steps=4), make_job("B", steps=5), make_job("C", steps=6), make_job("B", steps=7)
    for job in (a1, b1, c1, b2):
        queue.push(job)
    assert queue.pop_batch(1, b1.id) == [b1]
    assert [job.id for job in queue.order()] == [a1.id, c1.id, b2.id]  # A still first; B after C now
    assert queue.pop_batch(1) == [a1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("push push push front pop cancel".split()), st.integers(0, 4), st.integers(4, 6)), max_size=40))
def test_each_jobs_place_counted_from_the_lengths_is_its_place_in_the_fair_order(moves) -> None:
    """Whatever pushes, returns to the front, dispatches and cancels came before: the place said for
    a job is where the fair order has it."""
    queue = FairQueue(Limits(max_queued_per_user=100, max_queue=1000))
    for move, user, steps in moves:
        if move == "push":
            queue.push(make_job(f"user{user}", steps=steps))
        elif move == "front":
            queue.push_front(make_job(f"user{user}", steps=steps))
        elif move == "pop":
            queue.pop_batch(1 + user % 3)
        elif len(queue):
            queue.remove(queue.order()[user % len(queue)].id)
        order = queue.order()
        assert len(queue) == len(order)
        assert [queue.position(job.id) for job in order] == list(range(1, len(order) + 1))
