"""The workloads of bench/engine.py and how each is run and measured: throughput (queries,
passages, long: baseline then embedfleet on the same texts), latency (one query at a time,
p50/p99) and mixed (embedfleet only: single queries arriving during a bulk passage stream)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch

from bench._measure import Phase, log, measured, sync
from bench._stats import cosine_stats, percentiles, ratio
from bench._systems import Baseline, Embedded, embedfleet_embed
from embedfleet_worker.engine.executor import EmbeddingEngine
from embedfleet_worker.engine.options import EmbedOptions

T = TypeVar("T")

WORKLOADS = ("queries", "passages", "long", "latency", "mixed")
THROUGHPUT_WORKLOADS = ("queries", "passages", "long")
MIXED_INTERVAL_S = 0.020


@dataclass(frozen=True)
class Sizes:
    """How much of each workload to run."""

    queries: int
    passages: int
    long_lengths: tuple[int, ...]
    latency_runs: int
    latency_warmup: int
    mixed_bulk: int  # passages in the mixed workload's bulk stream


FULL = Sizes(2048, 2048, (8192, 8192, 32768, 32768), 200, 10, 2048)
QUICK = Sizes(64, 64, (512,), 10, 2, 256)


@dataclass
class Bench:
    device: torch.device
    baseline: Baseline
    engine: EmbeddingEngine
    texts: dict[str, list[str]] = field(default_factory=dict)


def fill_throughput(phase: Phase, embedded: Embedded | None) -> None:
    if embedded is None or phase.wall_s is None:
        return
    phase.texts = len(embedded.token_counts)
    phase.tokens = sum(embedded.token_counts)
    phase.padded_tokens = embedded.padded_tokens
    phase.tokens_per_s = phase.tokens / phase.wall_s
    phase.texts_per_s = phase.texts / phase.wall_s


async def run_throughput(bench: Bench, name: str) -> dict[str, Any]:
    texts = bench.texts[name]
    batch = 1 if name == "long" else None
    theirs, base = await measured(bench.device, _async(lambda: bench.baseline.embed(texts, batch)))
    fill_throughput(base, theirs)
    ours, ef = await measured(bench.device, lambda: embedfleet_embed(bench.engine, texts))
    fill_throughput(ef, ours)
    report: dict[str, Any] = {"baseline": asdict(base), "embedfleet": asdict(ef)}
    report["ratio_tokens_per_s"] = ratio(ef.tokens_per_s, base.tokens_per_s)
    if ours is not None and theirs is not None:
        report["token_counts_match"] = ours.token_counts == theirs.token_counts
        report["cosine"] = cosine_stats(ours.vectors, theirs.vectors)
    return report


def _async(fn: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def call() -> T:
        return fn()

    return call


async def _timed_runs(
    device: torch.device, one: Callable[[], Awaitable[Embedded]], runs: int, warmup: int
) -> tuple[list[float], int]:
    for _ in range(warmup):
        await one()
    latencies, tokens = [], 0
    for _ in range(runs):
        sync(device)
        started = time.perf_counter()
        result = await one()
        sync(device)
        latencies.append(time.perf_counter() - started)
        tokens += sum(result.token_counts)
    return latencies, tokens


async def latency_phase(
    bench: Bench, one: Callable[[], Awaitable[Embedded]], sizes: Sizes
) -> Phase:
    result, phase = await measured(
        bench.device,
        lambda: _timed_runs(bench.device, one, sizes.latency_runs, sizes.latency_warmup),
    )
    if result is not None:
        latencies, tokens = result
        busy = sum(latencies)
        phase.wall_s = busy  # the timed runs only, not the warm-up
        phase.texts, phase.tokens, phase.padded_tokens = len(latencies), tokens, tokens
        phase.tokens_per_s, phase.texts_per_s = tokens / busy, len(latencies) / busy
        phase.latency_ms = percentiles(latencies)
    return phase


async def run_latency(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    text = bench.texts["latency"]
    base = await latency_phase(bench, _async(lambda: bench.baseline.embed(text)), sizes)
    ef = await latency_phase(bench, lambda: embedfleet_embed(bench.engine, text), sizes)
    p50 = [p.latency_ms["p50_ms"] if p.latency_ms else None for p in (ef, base)]
    return {
        "baseline": asdict(base),
        "embedfleet": asdict(ef),
        "ratio_p50_latency": ratio(p50[0], p50[1]),  # embedfleet / baseline: lower is better
    }


async def _query(engine: EmbeddingEngine, text: str) -> float:
    started = time.perf_counter()
    await engine.embed([text], EmbedOptions())
    return time.perf_counter() - started


async def _bulk_until_done(engine: EmbeddingEngine, texts: list[str]) -> tuple[Embedded, float]:
    result = await embedfleet_embed(engine, texts)
    return result, time.perf_counter()


async def _mixed(engine: EmbeddingEngine, bulk: list[str], queries: list[str]) -> dict[str, Any]:
    """Open loop: a query every MIXED_INTERVAL_S, each on its own, while the bulk runs."""
    started = time.perf_counter()
    bulk_task = asyncio.create_task(_bulk_until_done(engine, bulk))
    pending: list[asyncio.Task[float]] = []
    while not bulk_task.done():
        pending.append(asyncio.create_task(_query(engine, queries[len(pending) % len(queries)])))
        wake = started + len(pending) * MIXED_INTERVAL_S
        await asyncio.sleep(max(0.0, wake - time.perf_counter()))
    try:
        embedded, finished = await bulk_task
    finally:  # also on failure: no query may be left running into the next phase
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
    latencies = [o for o in outcomes if not isinstance(o, BaseException)]
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    wall = finished - started
    tokens = sum(embedded.token_counts)
    return {
        "bulk": {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall},
        "query": percentiles(latencies),
    }


async def run_mixed(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    engine, bulk, queries = bench.engine, bench.texts["mixed_bulk"], bench.texts["mixed_queries"]
    alone_result, alone = await measured(bench.device, lambda: embedfleet_embed(engine, bulk))
    fill_throughput(alone, alone_result)
    solo = await latency_phase(bench, _async_cycle(engine, queries), sizes)
    mixed, phase = await measured(bench.device, lambda: _mixed(engine, bulk, queries))
    report: dict[str, Any] = {
        "arrival_interval_ms": MIXED_INTERVAL_S * 1000.0,
        "bulk_texts": len(bulk),
        "bulk_alone": asdict(alone),
        "query_solo": solo.latency_ms,
        "status": phase.status if alone.status == "ok" else alone.status,
        "peak_mem_bytes": phase.peak_mem_bytes,
    }
    if mixed is not None:
        report["bulk_mixed"] = mixed["bulk"]
        report["query_mixed"] = mixed["query"]
        report["bulk_tokens_per_s_mixed_over_alone"] = ratio(
            mixed["bulk"]["tokens_per_s"], alone.tokens_per_s
        )
        solo_p50 = solo.latency_ms["p50_ms"] if solo.latency_ms else None
        report["query_p50_mixed_over_solo"] = ratio(mixed["query"]["p50_ms"], solo_p50)
    return report


def _async_cycle(engine: EmbeddingEngine, texts: list[str]) -> Callable[[], Awaitable[Embedded]]:
    """One single-input request per call, cycling through `texts`."""
    counter = itertools.count()

    async def one() -> Embedded:
        return await embedfleet_embed(engine, [texts[next(counter) % len(texts)]])

    return one


async def run_workloads(bench: Bench, workloads: list[str], sizes: Sizes) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in workloads:
        log(f"running {name}")
        if name in THROUGHPUT_WORKLOADS:
            results[name] = await run_throughput(bench, name)
        elif name == "latency":
            results[name] = await run_latency(bench, sizes)
        else:
            results[name] = await run_mixed(bench, sizes)
    return results
