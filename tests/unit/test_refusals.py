"""Table-driven tests of which apiserver refusals stop the operator from re-applying a spec."""

from __future__ import annotations

import pytest

from embedfleet_operator.refusals import (
    PERMANENT_RETRY_SECONDS,
    REPEATS_BEFORE_PERMANENT,
    Refusal,
    refusal_message,
    refused,
    should_apply,
)


def refuse_in_a_row(statuses: list[int], generations: list[int]) -> Refusal | None:
    record: Refusal | None = None
    for status, generation in zip(statuses, generations, strict=True):
        record = refused(record, generation=generation, status=status, message="no", now=100.0)
    return record


@pytest.mark.parametrize(
    ("statuses", "generations", "permanent", "count"),
    [
        ([422], [1], True, 1),  # the spec's own fault: stop at once
        ([403], [1], True, 1),  # forbidden (RBAC, a quota): the same answer next time
        ([500], [1], False, 1),  # a moment's trouble, at first
        ([500] * (REPEATS_BEFORE_PERMANENT - 1), [1] * (REPEATS_BEFORE_PERMANENT - 1), False,
         REPEATS_BEFORE_PERMANENT - 1),
        ([500] * REPEATS_BEFORE_PERMANENT, [1] * REPEATS_BEFORE_PERMANENT, True,
         REPEATS_BEFORE_PERMANENT),  # the same 500 for the same spec: the spec's
        ([500, 500, 500], [1, 1, 2], False, 1),  # a new spec starts counting again
        ([422, 500], [1, 2], False, 1),
    ],
)  # fmt: skip
def test_which_refusals_are_the_specs(
    statuses: list[int], generations: list[int], permanent: bool, count: int
) -> None:
    record = refuse_in_a_row(statuses, generations)
    assert record is not None
    assert (record.permanent, record.count, record.generation) == (
        permanent,
        count,
        generations[-1],
    )


@pytest.mark.parametrize("status", [409, 429, 502, 503, 504])
def test_a_conflict_throttling_or_an_apiserver_not_ready_is_always_retried(status: int) -> None:
    assert refuse_in_a_row([500, status], [1, 1]) is None


def test_a_repeated_500_is_tried_again_after_a_doubling_backoff() -> None:
    delays = []
    for count in range(REPEATS_BEFORE_PERMANENT, REPEATS_BEFORE_PERMANENT + 8):
        record = refuse_in_a_row([500] * count, [1] * count)
        assert record is not None
        delays.append(record.retry_at - 100.0)
    assert delays == [15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0]
    record = refuse_in_a_row([422], [1])
    assert record is not None
    assert record.retry_at - 100.0 == PERMANENT_RETRY_SECONDS


@pytest.mark.parametrize(
    ("record", "generation", "now", "apply"),
    [
        (None, 1, 0.0, True),
        (refuse_in_a_row([500], [1]), 1, 101.0, True),  # not yet permanent: retry
        (refuse_in_a_row([422], [1]), 1, 101.0, False),  # refused for good: wait
        (refuse_in_a_row([422], [1]), 2, 101.0, True),  # ... for a new spec
        (refuse_in_a_row([422], [1]), 1, 100.0 + PERMANENT_RETRY_SECONDS, True),  # or long after
        (refuse_in_a_row([500] * 3, [1] * 3), 1, 114.0, False),  # a repeated 500: backing off
        (refuse_in_a_row([500] * 3, [1] * 3), 1, 115.0, True),
    ],
)  # fmt: skip
def test_should_apply(record: Refusal | None, generation: int, now: float, apply: bool) -> None:
    assert should_apply(record, generation=generation, now=now) is apply


def test_the_problem_names_the_reason_and_the_apiservers_words() -> None:
    body = '{"kind": "Status", "message": "admission webhook \\"x\\" denied the request"}'
    message = refusal_message(422, "Unprocessable Entity", body)
    assert message == (
        "the apiserver refused the workers' objects (422 Unprocessable Entity): "
        'admission webhook "x" denied the request'
    )
    assert refuse_in_a_row([422], [1]) is not None
    assert Refusal(1, 422, message, 1, True, 0.0).problem.reason == "InvalidSpec"
    assert Refusal(1, 500, message, 3, True, 0.0).problem.reason == "ApplyRefused"
    assert (
        refusal_message(500, None, b"not json")
        == "the apiserver refused the workers' objects (500)"
    )
