"""Measurement helpers for bench/engine.py: progress log, synchronised timing, GPU memory
accounting with OOM turned into a status (the figures made of them: _stats.py)."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from embedfleet_worker.engine.errors import BatchFailedError

T = TypeVar("T")
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def timed(fn: Callable[[], Any], repeats: int = 10, warmup: int = 3) -> float:
    """Median seconds per call on the GPU clock (CUDA events around each call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def free_memory(device: torch.device) -> None:
    """After an OOM: drop what the failed phase left and hand cached blocks back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(error, RuntimeError) and "out of memory" in str(error).lower():
        return True  # e.g. cuBLAS failing to allocate its workspace
    # The engine reports a failed batch by the exception's type name only.
    return isinstance(error, BatchFailedError) and "OutOfMemoryError" in str(error)


@dataclass
class Phase:
    """One system on one workload: throughput figures, or status "OOM"."""

    status: str = "ok"
    wall_s: float | None = None
    texts: int | None = None
    tokens: int | None = None
    padded_tokens: int | None = None
    tokens_per_s: float | None = None
    texts_per_s: float | None = None
    start_mem_bytes: int | None = None
    peak_mem_bytes: int | None = None
    latency_ms: dict[str, float] | None = None


async def measured(
    device: torch.device, work: Callable[[], Awaitable[T]]
) -> tuple[T | None, Phase]:
    """Runs `work` with synchronised timing and peak-memory accounting; OOM becomes a status.
    The caching allocator keeps its blocks between phases (no empty_cache unless a phase ran
    out of memory), so no phase pays for cudaMalloc that the one before had already paid."""
    gc.collect()
    sync(device)
    phase = Phase(start_mem_bytes=allocated(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        value = await work()
        sync(device)
    except Exception as error:
        if not is_oom(error):
            raise
        phase.status = "OOM"
        value = None
        log(f"OOM: {error}")
    phase.wall_s = time.perf_counter() - started
    if device.type == "cuda":
        phase.peak_mem_bytes = torch.cuda.max_memory_allocated(device)
    if phase.status == "OOM":
        free_memory(device)
    return value, phase
