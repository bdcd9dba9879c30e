"""First and later calls of causal GQA attention per SDPA backend and sequence length, with
Qwen3-Embedding-4B's shapes (32 query heads, 8 kv heads, head dim 128, bf16): what a new
length costs cuDNN (it builds a plan per shape) and FlashAttention. CUDA only.

    PYTHONPATH=worker:. python3 bench/attention_plans.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

LENGTHS = (8192, 8192, 8192, 8193, 8193, 12000, 12000, 32768, 32768)


def call_ms(length: int, backend: SDPBackend) -> float:
    q = torch.randn(1, 32, length, 128, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    started = time.perf_counter()
    with sdpa_kernel([backend]):
        F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__)
    call_ms(1024, SDPBackend.FLASH_ATTENTION)  # CUDA context and allocator, not measured
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        for length in LENGTHS:  # a repeated length is a later call
            print(f"{backend.name:16} {length:6} tokens {call_ms(length, backend):8.2f} ms")


if __name__ == "__main__":
    main()
