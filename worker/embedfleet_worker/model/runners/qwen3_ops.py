"""The Qwen3 layer's pointwise work, written once as plain tensor code and, on CUDA, compiled
by torch.compile into a few fused kernels: RMSNorm's scaling, per-head q/k RMSNorm + RoPE,
SiLU(gate) * up (RMSNorm's mean square stays an ATen reduction, see mean_square). Unfused,
these ~45 small kernels per layer took about half of a packed 16K-token batch's GPU time on an
H100 (bench/profile_qwen3.py); the matmuls and attention stay outside, in cuBLAS and
FlashAttention/cuDNN. The eager versions are the reference and run on CPU."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F


def mean_square(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm's statistic, always by ATen's reduction: a fused Triton reduction sums in
    another order, which moved the 4B model's vectors measurably further from transformers
    (min cosine 0.99897 instead of 0.99903 on an H100), so only the pointwise rest is fused."""
    return x.float().pow(2).mean(-1, keepdim=True)


def scale_norm(
    x: torch.Tensor,
    variance: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    # As Qwen3RMSNorm: normalise in fp32, cast to the compute dtype, then scale.
    return weight * (x.float() * torch.rsqrt(variance + eps)).to(dtype or x.dtype)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype | None = None
) -> torch.Tensor:
    return scale_norm(x, mean_square(x), weight, eps, dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def split_qkv(
    qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    return (
        qkv[:, :q_size].reshape(-1, num_heads, head_dim),
        qkv[:, q_size : q_size + kv_size].reshape(-1, num_kv_heads, head_dim),
        qkv[:, q_size + kv_size :].reshape(-1, num_kv_heads, head_dim),
    )


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_variance: torch.Tensor,
    k_variance: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm on q and k ([tokens, heads, head_dim]), then RoPE, as Qwen3Attention
    orders them; cos and sin are [tokens, 1, head_dim]."""
    q = scale_norm(q, q_variance, q_norm, eps, q.dtype)
    k = scale_norm(k, k_variance, k_norm, eps, k.dtype)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def add_rms_norm(
    residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    summed = residual + delta.float()
    return summed, rms_norm(summed, weight, eps, weight.dtype)


def split_qk_norm_rope(
    qkv: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    eps: float,
    norm_rope: Callable[..., tuple[torch.Tensor, torch.Tensor]] = qk_norm_rope,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as [tokens, heads, head_dim], q and k normed and rotated by `norm_rope`."""
    q, k, v = split_qkv(qkv, num_heads, num_kv_heads, q_norm.shape[0])
    q, k = norm_rope(q, k, mean_square(q), mean_square(k), q_norm, k_norm, cos, sin, eps)
    return q, k, v.contiguous()


class LayerOps:
    """The pointwise steps a runner calls: eager, or compiled for CUDA. Compiled once per
    process with dynamic shapes (the token count changes every batch).

    `fused_norms` (opt-in) also compiles RMSNorm's mean square into the fused kernels: 1.3x
    the passages throughput of the default on an H100, but its reduction order moves the 4B
    model's vectors to min cosine 0.99897 against transformers bf16 (the default: 0.99903;
    against the fp32 model both score 0.9993, transformers itself 0.99901). BENCHMARKS.md."""

    def __init__(self, compiled: bool, fused_norms: bool = False) -> None:
        self.compiled = compiled
        self.fused_norms = compiled and fused_norms
        # emulate_precision_casts: fused kernels round where eager rounds to bf16, so the
        # compiled path stays as close to transformers' numerics as the eager one.
        options: dict[str, str | int | bool | Callable[..., Any]] = {
            "emulate_precision_casts": True
        }
        if compiled:
            import torch._inductor.config as inductor_config  # only where it compiles

            # Compile in this process: a compile pool starts a process that forks a worker per
            # core, and they import torch for seconds of CPU just as the worker starts serving
            # (seen under load on an H200), then stay resident. The kernels are few and small.
            inductor_config.compile_threads = 1
        wrap: Callable[[Any], Any] = (
            (lambda fn: torch.compile(fn, dynamic=True, fullgraph=True, options=options))
            if compiled
            else (lambda fn: fn)
        )
        self._scale_norm = cast(Callable[..., torch.Tensor], wrap(scale_norm))
        self._qk_norm_rope = cast(
            Callable[..., tuple[torch.Tensor, torch.Tensor]], wrap(qk_norm_rope)
        )
        self.silu_mul = cast(Callable[..., torch.Tensor], wrap(silu_mul))
        if self.fused_norms:
            self._fused_rms_norm = cast(Callable[..., torch.Tensor], wrap(rms_norm))
            self._fused_add_rms_norm = cast(
                Callable[..., tuple[torch.Tensor, torch.Tensor]], wrap(add_rms_norm)
            )
            self._fused_qk = cast(
                Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                wrap(split_qk_norm_rope),
            )

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype
    ) -> torch.Tensor:
        if self.fused_norms:
            return self._fused_rms_norm(x, weight, eps, dtype)
        return self._scale_norm(x, mean_square(x), weight, eps, dtype)

    def add_rms_norm(
        self, residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fp32 residual stream plus a sublayer's output, and its norm in the weight's
        dtype."""
        if self.fused_norms:
            return self._fused_add_rms_norm(residual, delta, weight, eps)
        summed = residual + delta.float()
        return summed, self._scale_norm(summed, mean_square(summed), weight, eps, weight.dtype)

    def qk_norm_rope(
        self,
        qkv: torch.Tensor,
        q_norm: torch.Tensor,
        k_norm: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_heads: int,
        num_kv_heads: int,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as [tokens, heads, head_dim], q and k normed and rotated."""
        args = (qkv, q_norm, k_norm, cos, sin, num_heads, num_kv_heads, eps)
        if self.fused_norms:
            return self._fused_qk(*args)
        return split_qk_norm_rope(*args, norm_rope=self._qk_norm_rope)


def compile_available(device: torch.device) -> bool:
    """torch.compile needs Triton for CUDA kernels."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None
