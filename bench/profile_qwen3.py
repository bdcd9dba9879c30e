"""Where the Qwen3 runner's time goes on a GPU: the measured bf16 matmul rate of the model's own
GEMM shapes (the denominator of "% of the GPU's matmul rate"), a torch.profiler breakdown of
one packed passages batch and of a single 16-token query, and FlashAttention-2 varlen against
SDPA (which may pick cuDNN) on one long sequence.

    PYTHONPATH=worker:. python bench/profile_qwen3.py --model 4b [--json out.json]
"""

# ruff: noqa: E402  (sys.path is set before the imports: see below)
from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py: left first on sys.path (as it is for a script), it would shadow the
# standard library's `http` for every import (torch, openai, aiohttp). The repo root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bench._measure import timed
from bench._systems import build_model, build_runner, make_config
from embedfleet_worker.model.runners.qwen3 import Qwen3Runner
from embedfleet_worker.model.runners.qwen3_attention import packed_attention


def matmul_rates(runner: Qwen3Runner, tokens: int) -> dict[str, float]:
    """TFLOP/s of each projection's GEMM at `tokens` rows, as the runner calls it."""
    layer = runner.layers[0]
    x = torch.randn(tokens, runner.hidden_size, device="cuda", dtype=runner.dtype)
    inner = torch.randn(tokens, layer.down_weight.shape[1], device="cuda", dtype=runner.dtype)
    attn = torch.randn(tokens, layer.o_weight.shape[1], device="cuda", dtype=runner.dtype)
    rates = {}
    for name, inp, weight in (
        ("qkv", x, layer.qkv_weight),
        ("o", attn, layer.o_weight),
        ("gate_up", x, layer.gate_up_weight),
        ("down", inner, layer.down_weight),
    ):
        seconds = timed(lambda inp=inp, weight=weight: F.linear(inp, weight))
        rates[name] = 2 * tokens * weight.shape[0] * weight.shape[1] / seconds / 1e12
    return rates


def layer_flops_per_token(runner: Qwen3Runner) -> float:
    layer = runner.layers[0]
    weights = (layer.qkv_weight, layer.o_weight, layer.gate_up_weight, layer.down_weight)
    return 2.0 * sum(w.numel() for w in weights) * len(runner.layers)


def profile(fn: Callable[[], Any], rows: int = 25) -> dict[str, Any]:
    fn()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_time_total > 0 and e.device_type.name == "CUDA"]
    total = sum(e.device_time_total for e in kernels) or 1
    top = sorted(kernels, key=lambda e: e.device_time_total, reverse=True)[:rows]
    return {
        "kernel_launches": sum(e.count for e in kernels),
        "gpu_time_ms": total / 1000,
        "top": [
            {"name": e.key[:90], "calls": e.count, "ms": e.device_time_total / 1000,
             "share": e.device_time_total / total}
            for e in top
        ],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="4b")
    parser.add_argument("--passage-tokens", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--long-tokens", type=int, default=32768)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    config = make_config(args.model)
    model = build_model(config, device, dtype, seed=0)
    runner = build_runner(model, config, device, dtype)
    del model
    torch.cuda.empty_cache()
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "model": args.model}
    report["matmul_tflops"] = matmul_rates(runner, args.batch_tokens)
    gen = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(0, 150000, (n,), generator=gen).tolist()

    passages = [ids(args.passage_tokens) for _ in range(args.batch_tokens // args.passage_tokens)]
    seconds = timed(lambda: runner.embed(passages), repeats=5, warmup=2)
    tokens = sum(len(p) for p in passages)
    useful = layer_flops_per_token(runner) * tokens / seconds / 1e12
    report["passages_batch"] = {
        "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
        "useful_matmul_tflops": useful,
        "share_of_best_gemm_rate": useful / max(report["matmul_tflops"].values()),
        "profile": profile(lambda: runner.embed(passages)),
    }  # fmt: skip
    query = [ids(16)]
    report["single_query"] = {
        "ms": timed(lambda: runner.embed(query), repeats=50) * 1000,
        "profile": profile(lambda: runner.embed(query), rows=10),
    }
    long_seq = ids(args.long_tokens)
    report["long"] = {"runner_s": timed(lambda: runner.embed([long_seq]), repeats=3, warmup=1)}
    s = runner.shape
    q = torch.randn(args.long_tokens, s.num_heads, s.head_dim, device=device, dtype=dtype)
    k = torch.randn(args.long_tokens, s.num_kv_heads, s.head_dim, device=device, dtype=dtype)
    cu = torch.tensor([0, args.long_tokens], device=device, dtype=torch.int32)
    report["long"]["flash2_varlen_ms"] = 1000 * timed(
        lambda: packed_attention(
            q,
            k,
            k,
            cu,
            [1] * 8,
            backend=runner.attention_backend,
            scale=runner.scale,
            max_len=args.long_tokens,
        ),
        repeats=5,
    )
    qt, kt = q.transpose(0, 1)[None], k.transpose(0, 1)[None]
    report["long"]["sdpa_ms"] = 1000 * timed(
        lambda: F.scaled_dot_product_attention(qt, kt, kt, is_causal=True, enable_gqa=True),
        repeats=5,
    )
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for name, backend in (
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("flash", SDPBackend.FLASH_ATTENTION),
    ):
        try:
            with sdpa_kernel([backend]):
                report["long"][f"sdpa_{name}_ms"] = 1000 * timed(
                    lambda: F.scaled_dot_product_attention(
                        qt, kt, kt, is_causal=True, enable_gqa=True
                    ),
                    repeats=5,
                )
        except RuntimeError as error:
            report["long"][f"sdpa_{name}_ms"] = f"unavailable: {str(error)[:80]}"
    report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    time.sleep(0)


if __name__ == "__main__":
    main()
