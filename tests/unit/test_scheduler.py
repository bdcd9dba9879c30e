"""The engine's scheduler, without an engine: admission, turn-taking, progress, abandonment."""

from __future__ import annotations

import pytest

from embedfleet_worker.engine.errors import EngineOverloadedError
from embedfleet_worker.engine.scheduler import ScheduledRequest, Scheduler, SchedulerLimits

LIMITS = SchedulerLimits(
    max_batch_tokens=100,
    max_batch_size=8,
    max_queue_tokens=300,
    interactive_tokens=20,
    interactive_batch_tokens=50,
)


def request(request_id: int, *lengths: int, at: float = 0.0) -> ScheduledRequest:
    return ScheduledRequest(request_id, list(lengths), enqueued_at=at)


def taken_ids(scheduler: Scheduler[ScheduledRequest], **kwargs: bool) -> list[tuple[int, int]]:
    taken = scheduler.take(now=1.0, **kwargs)
    return [(r.request_id, index) for r, index in taken.inputs]


def test_admission_is_bounded_by_queued_tokens_but_an_empty_queue_takes_anything() -> None:
    scheduler: Scheduler[ScheduledRequest] = Scheduler(LIMITS)
    scheduler.admit(request(1, 400))  # alone: admitted even above the bound
    with pytest.raises(EngineOverloadedError):
        scheduler.admit(request(2, 10))
    assert scheduler.depth == (400, 1)


@pytest.mark.parametrize(
    ("queue", "interactive_only", "expected"),
    [
        # Requests take turns, one input each, oldest first.
        ([(1, 30, 30, 30), (2, 30)], False, [(1, 0), (2, 0), (1, 1)]),
        # A waiting query goes first and caps the batch at interactive_batch_tokens.
        ([(1, 30, 30, 30), (2, 10)], False, [(2, 0), (1, 0)]),
        # Queries alone are not capped; bulk waits for the next batch.
        ([(1, 30, 30), (2, 20), (3, 20), (4, 15)], False, [(2, 0), (3, 0), (4, 0)]),
        # Between a bulk batch's layers: queries only.
        ([(1, 30, 30, 30), (2, 10), (3, 15)], True, [(2, 0), (3, 0)]),
        # An input longer than the whole budget runs alone.
        ([(1, 150), (2, 30)], False, [(1, 0)]),
    ],
)
def test_take_plans_the_next_batch(
    queue: list[tuple[int, ...]], interactive_only: bool, expected: list[tuple[int, int]]
) -> None:
    scheduler: Scheduler[ScheduledRequest] = Scheduler(LIMITS)
    for request_id, *lengths in queue:
        scheduler.admit(request(request_id, *lengths))
    assert sorted(taken_ids(scheduler, interactive_only=interactive_only)) == sorted(expected)


def test_progress_queue_waits_and_depth_follow_each_take() -> None:
    scheduler: Scheduler[ScheduledRequest] = Scheduler(LIMITS)
    bulk = request(1, *[40] * 5, at=0.25)
    scheduler.admit(bulk)
    first = scheduler.take(interactive_only=False, now=1.0)
    assert [i for _, i in first.inputs] == [0, 1]  # 80 of 100 tokens; a third would not fit
    assert first.queue_waits == [0.75]  # the request's first input started
    assert first.num_tokens == 80
    assert scheduler.depth == (120, 1)
    second = scheduler.take(interactive_only=False, now=2.0)
    assert [i for _, i in second.inputs] == [2, 3]
    assert second.queue_waits == []  # already started
    third = scheduler.take(interactive_only=False, now=3.0)
    assert [i for _, i in third.inputs] == [4]
    assert scheduler.depth == (0, 0)


def test_an_abandoned_request_leaves_the_queue_and_frees_its_tokens() -> None:
    scheduler: Scheduler[ScheduledRequest] = Scheduler(LIMITS)
    gone, query = request(1, 90, 90), request(2, 10)
    scheduler.admit(gone)
    scheduler.admit(query)
    assert scheduler.has_interactive()
    gone.cancel()
    assert taken_ids(scheduler, interactive_only=False) == [(2, 0)]
    assert scheduler.depth == (0, 0)
    assert scheduler.drop_abandoned() is False
    query2 = request(3, 10)
    scheduler.admit(query2)
    query2.cancel()
    assert not scheduler.has_interactive()
