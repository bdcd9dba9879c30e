"""How a query batch is laid out in a CUDA-graph bucket's static inputs (CPU tensors here; the
GPU test checks the graphs' vectors against the eager path)."""

from __future__ import annotations

import itertools

import pytest
import torch

from embedfleet_worker.model.runners.qwen3_graphs import BUCKETS, Bucket, _Captured


def layout(bucket: Bucket, lengths: list[int]) -> _Captured:
    captured = _Captured(bucket, torch.device("cpu"))
    captured.fill([[7] * n for n in lengths])
    return captured


@pytest.mark.parametrize(
    ("bucket", "lengths", "cu", "last"),
    [
        (Bucket(16, 8, 16), [3], [0, 3, *[3] * 7, 16], [2, *[0] * 7]),
        (Bucket(16, 8, 16), [10, 6], [0, 10, 16, *[16] * 6, 16], [9, 15, *[0] * 6]),
        # Padding longer than the bound is split: 848 tokens as 512 + 336, two slots unused.
        (
            Bucket(2048, 256, 512),
            [500, 400, 300],
            [0, 500, 900, 1200, *[1200] * 253, 1712, 2048, 2048, 2048],
            [499, 899, 1199, *[0] * 253],
        ),
        (Bucket(1024, 128, 512), [512, 512], [0, 512, 1024, *[1024] * 126, 1024, 1024], None),
    ],
)
def test_fill_lays_out_real_sequences_then_bounded_padding(
    bucket: Bucket, lengths: list[int], cu: list[int], last: list[int] | None
) -> None:
    captured = layout(bucket, lengths)
    assert captured.cu_seqlens.tolist() == cu
    if last is not None:
        assert captured.last.tolist() == last
    # Every sequence, padding included, starts its positions at 0 and fits the bound.
    bounds = list(itertools.pairwise(cu))
    assert all(end - start <= bucket.longest for start, end in bounds)
    positions = captured.positions.tolist()
    for start, end in bounds:
        assert positions[start:end] == list(range(end - start))
    total = sum(lengths)
    assert captured.ids[:total].tolist() == [7] * total
    assert captured.ids[total:].tolist() == [0] * (bucket.tokens - total)


@pytest.mark.parametrize(
    ("lengths", "holds"),
    [([16], True), ([17], False), ([8] * 9, False), ([1] * 8, True)],
)
def test_a_bucket_holds_by_tokens_slots_and_longest(lengths: list[int], holds: bool) -> None:
    assert Bucket(16, 8, 16).holds(lengths) is holds


@pytest.mark.parametrize(
    "lengths", [[512] * 4, [8] * 256, [48] * 42, [1], [300, 300, 300], [512, 1]]
)
def test_every_query_batch_the_engine_plans_has_a_bucket(lengths: list[int]) -> None:
    # The engine's query batches: at most 2,048 tokens and 256 inputs, each at most 512 tokens.
    assert any(bucket.holds(lengths) for bucket in BUCKETS)


@pytest.mark.parametrize("total", [513, 600, 1186, 1430, 1575, 2049, 2197, 2878, 3072])
def test_a_query_batch_pays_for_little_padding(total: int) -> None:
    # A batch in a graph computes its bucket's padding too (bench/query_batches.py: 40 queries
    # in the 2,048-token bucket took 38 ms, in a 1,280-token one 25 ms).
    lengths = [32] * (total // 32) + ([total % 32] if total % 32 else [])
    bucket = next(b for b in BUCKETS if b.holds(lengths))
    assert bucket.tokens <= total * 1.07
