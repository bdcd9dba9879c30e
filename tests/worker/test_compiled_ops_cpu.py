"""The Qwen3 runner's pointwise kernels compiled by torch.compile, on CPU, under the suite's
warnings-as-errors: CI has no GPU, but the same compile path (dynamo tracing, inductor) runs
here, so a warning it raises (a deprecation inside torch, say) fails in CI instead of first
on the GPU machine, and the compiled kernels must still match the eager ones."""

from __future__ import annotations

import pytest
import torch

from embedfleet_worker.model.runners.qwen3_ops import LayerOps

pytestmark = pytest.mark.slow

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, EPS = 4, 2, 16, 64, 1e-6


def inputs(tokens: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    angles = torch.rand(tokens, HEAD_DIM // 2, generator=g) * 6.28
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(torch.bfloat16)[:, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(torch.bfloat16)[:, None, :]
    return {
        "x": rand(tokens, HIDDEN),
        "residual": torch.randn(tokens, HIDDEN, generator=g),
        "weight": rand(HIDDEN),
        "qkv": rand(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM),
        "q_norm": rand(HEAD_DIM),
        "k_norm": rand(HEAD_DIM),
        "gate_up": rand(tokens, 2 * HIDDEN),
        "cos": cos,
        "sin": sin,
    }


def run(ops: LayerOps, t: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    normed = ops.rms_norm(t["x"], t["weight"], EPS, torch.bfloat16)
    summed, added = ops.add_rms_norm(t["residual"], t["x"], t["weight"], EPS)
    q, k, v = ops.qk_norm_rope(
        t["qkv"], t["q_norm"], t["k_norm"], t["cos"], t["sin"], HEADS, KV_HEADS, EPS
    )
    return [normed, summed, added, q, k, v, ops.silu_mul(t["gate_up"])]


@pytest.mark.parametrize("fused_norms", [False, True])
def test_compiled_pointwise_kernels_match_eager_without_a_warning(fused_norms: bool) -> None:
    eager, compiled = LayerOps(compiled=False), LayerOps(compiled=True, fused_norms=fused_norms)
    for tokens, seed in ((7, 0), (33, 1)):  # two sizes: the dynamic-shape kernels are reused
        t = inputs(tokens, seed)
        with torch.inference_mode():
            for ours, theirs in zip(run(compiled, t), run(eager, t), strict=True):
                assert ours.shape == theirs.shape
                assert ours.dtype == theirs.dtype
                torch.testing.assert_close(ours.float(), theirs.float(), atol=0.02, rtol=0.02)
