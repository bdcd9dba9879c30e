"""Table-driven tests of token-budget batch planning and its fairness across requests."""

from __future__ import annotations

import pytest

from embedfleet_worker.engine.batching import BatchPlan, QueuedRequest, largest_batch, plan_batch


def q(request_id: int, *tokens: int) -> QueuedRequest:
    return QueuedRequest(request_id, tokens)


@pytest.mark.parametrize(
    ("queue", "max_tokens", "max_size", "expected"),
    [
        pytest.param([], 100, 10, BatchPlan({}, 0, 0), id="empty queue"),
        pytest.param([q(1, 10, 10, 10)], 100, 10, BatchPlan({1: 3}, 3, 30), id="all fit"),
        pytest.param([q(1, 40, 40, 40)], 100, 10, BatchPlan({1: 2}, 2, 80), id="token budget"),
        pytest.param([q(1, *[1] * 20)], 100, 8, BatchPlan({1: 8}, 8, 8), id="size cap"),
        pytest.param(
            [q(1, 500, 10), q(2, 10)], 100, 10, BatchPlan({1: 1}, 1, 500), id="oversized runs alone"
        ),
        pytest.param(
            [q(1, *[30] * 100), q(2, 8), q(3, 12)],
            100,
            64,
            BatchPlan({1: 2, 2: 1, 3: 1}, 4, 80),
            id="round robin: queries share the bulk request's batch",
        ),
        pytest.param(
            [q(1, 10, 90, 10), q(2, 20)],
            100,
            10,
            BatchPlan({1: 1, 2: 1}, 2, 30),
            id="a skipped input blocks the rest of its own request only",
        ),
        pytest.param(
            [q(1), q(2, 5)], 100, 10, BatchPlan({2: 1}, 1, 5), id="drained request is skipped"
        ),
    ],
)
def test_plan_batch(
    queue: list[QueuedRequest], max_tokens: int, max_size: int, expected: BatchPlan
) -> None:
    assert plan_batch(queue, max_batch_tokens=max_tokens, max_batch_size=max_size) == expected


def test_every_request_gets_a_turn_in_every_batch_while_budget_lasts() -> None:
    bulk = q(0, *[100] * 2000)
    queries = [q(i, 10) for i in range(1, 33)]
    plan = plan_batch([bulk, *queries], max_batch_tokens=16384, max_batch_size=256)
    assert all(plan.take.get(i) == 1 for i in range(1, 33))
    assert plan.num_tokens <= 16384


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        plan_batch([q(1, 1)], max_batch_tokens=0, max_batch_size=1)


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        pytest.param(
            [q(1, *[100] * 50), q(2, 12)],
            BatchPlan({2: 1, 1: 2}, 3, 212),
            id="a waiting query goes first and caps the batch",
        ),
        pytest.param(
            [q(1, *[100] * 50)], BatchPlan({1: 10}, 10, 1000), id="bulk alone uses the full budget"
        ),
        pytest.param(
            [q(i, 40) for i in range(10)],
            BatchPlan({i: 1 for i in range(10)}, 10, 400),
            id="queries alone are not capped: one batch of all of them",
        ),
        pytest.param(
            [q(1, *[100] * 50), *(q(i, 40) for i in range(2, 9))],
            BatchPlan({i: 1 for i in range(2, 9)}, 7, 280),
            id="queries past the cap leave no room for bulk",
        ),
        pytest.param(
            [q(1, *[100] * 50), *(q(i, 40) for i in range(2, 40))],
            BatchPlan({i: 1 for i in range(2, 27)}, 25, 1000),
            id="queries are still bounded by the whole budget",
        ),
        pytest.param(
            [q(1, 40, 40), q(2, 300)],
            BatchPlan({1: 2, 2: 1}, 3, 380),
            id="no interactive request: plain round robin",
        ),
    ],
)
def test_interactive_requests_get_short_batches(
    queue: list[QueuedRequest], expected: BatchPlan
) -> None:
    plan = plan_batch(
        queue,
        max_batch_tokens=1000,
        max_batch_size=64,
        interactive_tokens=64,
        interactive_batch_tokens=256,
    )
    assert plan == expected


@pytest.mark.parametrize(
    ("max_batch_tokens", "max_input_tokens", "ids", "lengths"),
    [
        (16384, 40960, [5, 6], [16384]),  # Qwen3: one input fills the batch
        (16384, 512, [7], [512] * 32),  # MiniLM-like: many inputs of the longest length
        (1000, 300, [1, 2, 3], [300, 300, 300, 100]),  # the remainder comes last
        (3, 8, [9, 8, 7, 6], [3]),
    ],
)
def test_largest_batch(
    max_batch_tokens: int, max_input_tokens: int, ids: list[int], lengths: list[int]
) -> None:
    batch = largest_batch(max_batch_tokens, max_input_tokens, ids)
    assert [len(sequence) for sequence in batch] == lengths
    assert batch[0][: len(ids)] == ids[: lengths[0]]  # the ids, repeated in order
    assert {token for sequence in batch for token in sequence} <= set(ids)


@pytest.mark.parametrize(("tokens", "longest", "ids"), [(0, 8, [1]), (8, 0, [1]), (8, 8, [])])
def test_largest_batch_rejects_empty_sizes(tokens: int, longest: int, ids: list[int]) -> None:
    with pytest.raises(ValueError, match="positive sizes"):
        largest_batch(tokens, longest, ids)
