"""Pooling and Matryoshka post-processing on hand-computed tensors."""

from __future__ import annotations

import pytest
import torch

from embedfleet_worker.engine.pooling import (
    PoolingMode,
    finalize,
    finalize_rows,
    pool_packed,
    pool_padded,
)

# Two packed sequences: lengths 2 and 3, hidden size 2.
PACKED = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [20.0, 0.0], [30.0, 6.0]])
CU = torch.tensor([0, 2, 5])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (PoolingMode.LAST_TOKEN, [[3.0, 4.0], [30.0, 6.0]]),
        (PoolingMode.CLS, [[1.0, 2.0], [10.0, 0.0]]),
        (PoolingMode.MEAN, [[2.0, 3.0], [20.0, 2.0]]),
    ],
)
def test_pool_packed(mode: PoolingMode, expected: list[list[float]]) -> None:
    assert torch.equal(pool_packed(PACKED, CU, mode), torch.tensor(expected))


@pytest.mark.parametrize(
    ("mode", "side"),
    [(m, s) for m in PoolingMode for s in ("left", "right") if (m, s) != (PoolingMode.CLS, "left")],
)
def test_pool_padded_matches_packed_for_either_padding_side(mode: PoolingMode, side: str) -> None:
    padded = torch.zeros(2, 3, 2)
    mask = torch.zeros(2, 3, dtype=torch.long)
    for row, (start, end) in enumerate([(0, 2), (2, 5)]):
        length = end - start
        offset = 3 - length if side == "left" else 0
        padded[row, offset : offset + length] = PACKED[start:end]
        mask[row, offset : offset + length] = 1
    padded[0, 2 if side == "right" else 0] = 99.0  # garbage in the padding must not leak
    assert torch.equal(pool_padded(padded, mask, mode), pool_packed(PACKED, CU, mode))


def test_pooling_is_fp32_even_for_half_inputs() -> None:
    assert pool_packed(PACKED.to(torch.bfloat16), CU, PoolingMode.MEAN).dtype == torch.float32


def test_finalize_truncates_then_renormalises() -> None:
    vector = torch.tensor([[3.0, 4.0, 12.0]])
    full = finalize(vector, normalize=True, dimensions=None)
    assert torch.allclose(full, torch.tensor([[3 / 13, 4 / 13, 12 / 13]]))
    prefix = finalize(vector, normalize=True, dimensions=2)
    assert torch.allclose(prefix, torch.tensor([[0.6, 0.8]]))
    raw = finalize(vector, normalize=False, dimensions=2)
    assert torch.equal(raw, torch.tensor([[3.0, 4.0]]))


ROWS = torch.tensor([[3.0, 4.0, 12.0], [0.0, 5.0, 0.0], [6.0, 8.0, 1.0]])


@pytest.mark.parametrize(
    "options",
    [
        [(True, None)] * 3,
        [(False, 2)] * 3,
        [(True, None), (False, None), (True, 2)],
        [(True, 2), (True, None), (True, 2)],
        [(False, 2), (True, 2), (False, None)],
    ],
)
def test_finalize_rows_matches_finalize_of_each_row(options: list[tuple[bool, int | None]]) -> None:
    out = finalize_rows(ROWS, options)
    for row, (normalize, dimensions) in enumerate(options):
        alone = finalize(ROWS[row : row + 1], normalize=normalize, dimensions=dimensions)[0]
        assert torch.allclose(out[row, : alone.shape[0]], alone)
