"""Pooling and vector post-processing: pure tensor functions, always computed in fp32.

Packed layout: all sequences of a batch concatenated along dim 0 (no padding), with
`cu_seqlens` = [0, len0, len0+len1, ...] (int64, length N+1) marking the boundaries."""

from __future__ import annotations

from enum import StrEnum

import torch


class PoolingMode(StrEnum):
    LAST_TOKEN = "lasttoken"
    MEAN = "mean"
    CLS = "cls"


def pool_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """[total_tokens, H] packed hidden states -> [N, H] fp32, one vector per sequence."""
    hidden = hidden.float()
    if mode is PoolingMode.LAST_TOKEN:
        return hidden.index_select(0, cu_seqlens[1:] - 1)
    if mode is PoolingMode.CLS:
        return hidden.index_select(0, cu_seqlens[:-1])
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    segment = torch.repeat_interleave(torch.arange(lengths.numel(), device=hidden.device), lengths)
    sums = torch.zeros(lengths.numel(), hidden.shape[1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, segment, hidden)
    return sums / lengths.unsqueeze(1).to(torch.float32)


def pool_padded(
    hidden: torch.Tensor, attention_mask: torch.Tensor, mode: PoolingMode
) -> torch.Tensor:
    """[B, L, H] padded hidden states with a [B, L] 0/1 mask (left or right padding) -> [B, H]."""
    hidden = hidden.float()
    mask = attention_mask.to(torch.float32)
    if mode is PoolingMode.MEAN:
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    real = torch.where(mask > 0, positions, -1 if mode is PoolingMode.LAST_TOKEN else mask.shape[1])
    index = real.max(dim=1).values if mode is PoolingMode.LAST_TOKEN else real.min(dim=1).values
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def finalize(vectors: torch.Tensor, *, normalize: bool, dimensions: int | None) -> torch.Tensor:
    """Matryoshka truncation to the first `dimensions` dims, then (optionally) L2 normalisation,
    so a truncated vector is the re-normalised prefix of the full one."""
    vectors = vectors.float()
    if dimensions is not None:
        vectors = vectors[..., :dimensions]
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, p=2.0, dim=-1)
    return vectors


def finalize_rows(vectors: torch.Tensor, options: list[tuple[bool, int | None]]) -> torch.Tensor:
    """`finalize` per row, with each row's (normalize, dimensions): one kernel for the usual
    batch whose rows share their options. Rows of a mixed batch are zero-padded to the widest
    width; row i's vector is its first `dimensions` (or all) values."""
    kinds = set(options)
    if len(kinds) == 1:
        normalize, dimensions = options[0]
        return finalize(vectors, normalize=normalize, dimensions=dimensions)
    out = torch.zeros(vectors.shape, dtype=torch.float32, device=vectors.device)
    for normalize, dimensions in kinds:
        rows = torch.tensor(
            [i for i, kind in enumerate(options) if kind == (normalize, dimensions)],
            device=vectors.device,
        )
        done = finalize(vectors[rows], normalize=normalize, dimensions=dimensions)
        out[rows, : done.shape[1]] = done
    return out
