"""What a Qwen3 runner prepares on a GPU so that requests do not pay for it: the fused kernels
compiled, cuDNN's attention plans for long inputs and CUDA graphs for query batches.

Together they took 11-12 s of a 4B worker's 27 s start on an H200 (BENCHMARKS.md). A worker no
longer waits for them before Ready: `preparation_steps` yields after each short step, and the
engine runs the steps on its compute thread when it is idle or between batches, while the
runner serves eagerly until each piece is in place (the vectors agree within bf16 rounding,
tests/gpu). The kernels compile on a thread of their own, since compiling is seconds of CPU
that no request should wait behind; everything kept per thread (attention plans) or needing a
quiet stream (graph capture) runs on the compute thread itself."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import torch
import torch.nn.functional as F

from embedfleet_worker.model.runners.qwen3 import Qwen3Runner
from embedfleet_worker.model.runners.qwen3_attention import (
    LONG_SEQUENCE,
    LONG_SEQUENCE_STEP,
    padded_length,
    preferred_sdpa_backends,
)
from embedfleet_worker.model.runners.qwen3_graphs import SmallBatchGraphs
from embedfleet_worker.model.runners.qwen3_ops import LayerOps

log = logging.getLogger("embedfleet.worker")


def preparation_steps(runner: Qwen3Runner, *, serving: bool = True) -> Iterator[bool]:
    """Each `next` does one step of at most ~0.1 s on the calling thread and yields True, or
    yields False while only the compile thread has work (the caller may wait a little). Run
    on another thread afterwards, it builds only that thread's attention plans.

    `serving` (requests run between the steps): the CUDA graphs are captured first, of the
    eager kernels, and again once the kernels have compiled. A graph's replay needs almost
    none of the interpreter the compile thread shares, so queries keep their speed while it
    compiles: eager queries then took 0.1-4.5 s (4B, H200; BENCHMARKS.md). Otherwise the
    kernels compile first and the graphs are captured once."""
    if runner.device.type != "cuda":
        return
    phases = runner.prepare_seconds
    if threading.get_ident() not in runner.planned_threads:
        started = time.perf_counter()
        for _ in _attention_plans(runner):
            yield True
        runner.planned_threads.add(threading.get_ident())
        phases["attention_plans"] = round(time.perf_counter() - started, 2)
    if serving and runner.graphs is None:
        yield from _graph_steps(runner, "cuda_graphs_eager")
    if runner.compile_wanted and not runner.ops.compiled:
        compiling = _compile_beside(runner)
        while not compiling.done():
            yield False
        try:
            runner.ops = compiling.result()  # between batches: no batch mixes the two
        except Exception as error:  # eager is slower, never wrong: keep serving
            log.warning("compiling the fused kernels failed; they stay eager", exc_info=error)
            if runner.graphs is not None:
                return
        yield from _graph_steps(runner, "cuda_graphs")
    elif runner.graphs is None:
        yield from _graph_steps(runner, "cuda_graphs")


def _graph_steps(runner: Qwen3Runner, label: str) -> Iterator[bool]:
    """Captures a set of graphs of the runner's current kernels, one bucket a step. A first
    set serves each bucket once captured; a later one replaces (and frees) the set before it
    once complete, which serves until then."""
    with torch.inference_mode():
        graphs = SmallBatchGraphs(runner)
    if runner.graphs is None:
        runner.graphs = graphs
    while _capture_next(graphs):
        yield True
    runner.graphs = graphs
    for part, seconds in graphs.seconds.items():
        runner.prepare_seconds[f"{label}_{part}"] = round(seconds, 2)


def _capture_next(graphs: SmallBatchGraphs) -> bool:
    with torch.inference_mode():  # per step: a generator must not yield inside it
        return graphs.capture_next()


def prepare_fully(runner: Qwen3Runner) -> None:
    """All of it now, on this thread (benchmarks, tests, `--prepare-before-ready`)."""
    for worked in preparation_steps(runner, serving=False):
        if not worked:
            time.sleep(0.01)


def _compile_beside(runner: Qwen3Runner) -> Future[LayerOps]:
    done: Future[LayerOps] = Future()

    def compile_kernels() -> None:
        try:
            done.set_result(_compiled_ops(runner))
        except BaseException as error:  # handed to the compute thread, which logs it
            done.set_exception(error)

    threading.Thread(target=compile_kernels, name="embedfleet-compile", daemon=True).start()
    return done


def _compiled_ops(runner: Qwen3Runner) -> LayerOps:
    """Compiled ops, compiled by running a copy of the runner that uses them on a stream of
    its own (the runner itself keeps serving eagerly meanwhile): one packed batch for the
    dynamic-shape kernels, one long input for the per-sequence attention path's layouts (its
    first use otherwise recompiled, 1.3 s on a fresh worker's first 8K input)."""
    started = time.perf_counter()
    ops = LayerOps(compiled=True, fused_norms=runner.fused_norms)
    trial = copy.copy(runner)  # shares the weights
    trial.ops, trial.graphs = ops, None
    stream = torch.cuda.Stream(runner.device)  # type: ignore[no-untyped-call]
    with torch.inference_mode(), torch.cuda.stream(stream):
        trial.embed([[1] * 300, [2] * 20])
        trial.embed([[3] * LONG_SEQUENCE])
    stream.synchronize()
    runner.prepare_seconds["compile"] = round(time.perf_counter() - started, 2)
    return ops


def _attention_plans(runner: Qwen3Runner) -> Iterator[None]:
    """One attention call per padded long length up to max_positions (about 1.5 s in all for
    Qwen3's 40,960), one per step, so no request pays for building cuDNN's plan for its
    length."""
    s, device, dtype = runner.shape, runner.device, runner.dtype
    for padded in range(LONG_SEQUENCE, padded_length(s.max_positions) + 1, LONG_SEQUENCE_STEP):
        with torch.inference_mode():
            q = torch.zeros(1, s.num_heads, padded, s.head_dim, device=device, dtype=dtype)
            kv = torch.zeros(1, s.num_kv_heads, padded, s.head_dim, device=device, dtype=dtype)
            with preferred_sdpa_backends(device):
                F.scaled_dot_product_attention(
                    q, kv, kv, is_causal=True, scale=runner.scale, enable_gqa=True
                )
        torch.cuda.synchronize(device)
        yield
