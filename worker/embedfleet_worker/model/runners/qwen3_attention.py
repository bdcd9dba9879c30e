"""Causal attention over a packed batch: each sequence attends within itself, through varlen
FlashAttention-2 on a GPU or per-sequence SDPA (cuDNN first) for long inputs and elsewhere.
With shared prefixes (shared_prefixes.py) a sequence's keys are gathered from its prefix's and
its own, and it has fewer queries than keys: the causal mask is then aligned at the end (its
last query sees every key)."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F

LONG_SEQUENCE = 4096  # from here on, per-sequence SDPA (cuDNN/flash) beats FA2 varlen
# cuDNN builds an attention plan for each new sequence length (48-68 ms on an H200, once 765 ms),
# so long sequences are padded at the end to a multiple of this and the plans for those lengths
# are built as the runner prepares. Causal attention makes the padding exact: no real position
# attends to a later one. (FlashAttention needs no plan, but at 8K/32K tokens it takes 1.9x/2x
# cuDNN's time.)
LONG_SEQUENCE_STEP = 1024


def padded_length(length: int) -> int:
    return -(-length // LONG_SEQUENCE_STEP) * LONG_SEQUENCE_STEP


def preferred_sdpa_backends(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """On a GPU, cuDNN attention first: 15 ms against 25 ms for FlashAttention-2 on a causal
    32K-token sequence on an H100 (bench/profile_qwen3.py)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
             SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]  # fmt: skip
    return cast(contextlib.AbstractContextManager[None], sdpa_kernel(order, set_priority=True))


@dataclass(frozen=True)
class GatheredKeys:
    """Each sequence's keys as packed-token indices, when they are not its own tokens."""

    index: torch.Tensor  # [total keys] long: rows of the packed k and v
    cu_seqlens: torch.Tensor  # int32, one more than sequences
    lengths: list[int]


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    lengths: list[int],
    *,
    backend: str,
    scale: float,
    max_len: int | None = None,
    keys: GatheredKeys | None = None,
) -> torch.Tensor:
    """[T, heads, head_dim] in and out. `max_len`: a static bound for the CUDA graphs."""
    cu_k, k_lengths = cu_seqlens, lengths
    if keys is not None:
        k, v = k.index_select(0, keys.index), v.index_select(0, keys.index)
        cu_k, k_lengths = keys.cu_seqlens, keys.lengths
    longest = max(k_lengths)
    if backend == "flash" and (longest < LONG_SEQUENCE or len(lengths) > 4):
        # Varlen FlashAttention-2; GQA is native (kv heads only have to divide q heads), and
        # with fewer queries than keys its causal mask is aligned at the end.
        result = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_k, max_len or max(lengths), max_len or longest,
            0.0, True, False, scale=scale,
        )  # fmt: skip
        return cast(torch.Tensor, result[0])
    outputs = []
    pad = q.device.type == "cuda"
    query_spans = itertools.pairwise(itertools.accumulate(lengths, initial=0))
    key_spans = itertools.pairwise(itertools.accumulate(k_lengths, initial=0))
    for (start, end), (k_start, k_end) in zip(query_spans, key_spans, strict=True):
        # [1, heads, len, head_dim] per sequence; is_causal masks within it only. On a
        # GPU this picks cuDNN or flash attention, faster than FA2 varlen on long inputs.
        mask = None
        if end - start != k_end - k_start:  # a shared prefix's keys first: aligned at the end
            mask = torch.ones(end - start, k_end - k_start, dtype=torch.bool, device=q.device)
            mask = mask.tril(diagonal=(k_end - k_start) - (end - start))
        if pad and mask is None and end - start >= LONG_SEQUENCE:
            padded = padded_length(end - start)
            qs, ks, vs = (padded_heads(t[start:end], padded) for t in (q, k, v))
        else:
            qs = q[start:end].transpose(0, 1)[None]
            ks, vs = (t[k_start:k_end].transpose(0, 1)[None] for t in (k, v))
        with preferred_sdpa_backends(q.device):
            out = F.scaled_dot_product_attention(
                qs, ks, vs, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
            )
        outputs.append(out[0, :, : end - start].transpose(0, 1))
    return torch.cat(outputs)


def padded_heads(rows: torch.Tensor, padded: int) -> torch.Tensor:
    """[len, heads, head_dim] as a contiguous [1, heads, padded, head_dim], zeros after len: the
    layout the plans were built for, whatever the length."""
    out = rows.new_zeros(1, rows.shape[1], padded, rows.shape[2])
    out[0, :, : rows.shape[0]] = rows.transpose(0, 1)
    return out
