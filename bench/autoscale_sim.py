"""Autoscaling, simulated: embedfleet's real policy against Kubernetes HPA, Knative's KPA and a
fixed fleet sized for the peak, on day-long load traces, second by second.

Why a simulator: an autoscaler's worth is GPU-hours saved against latency lost over whole days
of traffic, with pods that take minutes to load a model. That cannot be measured in a test
cluster in minutes, and a policy must not be judged on the traces it was tuned on. So the one
thing that is not simulated is the policy: `embedfleet_operator.policy.decide` and `remember`
run unchanged, fed what the operator's observer would scrape. The baselines are written from
their public specifications (see each class in `_sim_policies.py`); every policy gets the same
fleet model, capacity, SLO, traces, start delays (same seed, same sequence), utilisation target
(65%), minReplicas and maxReplicas.

Model (`_sim_cluster.py`): 1 s steps; a replica serves `--capacity` tokens/s (50,000: Qwen3-
Embedding-4B on one H100/H200-class GPU, BENCHMARKS.md) from its own FIFO queue; arrivals are
split evenly over ready replicas; latency = queue / capacity + a batch step (50 ms) + the
request's own compute (500 tokens / capacity); pods are ready 60-180 s after creation and hold
a GPU from creation; scale-down removes pods at once, starting ones first, and spreads a
removed replica's queue over the others. A minute whose traffic-weighted p95 latency is over
`--slo` is an SLO-violation minute. Traces (`_sim_traces.py`): diurnal, spike, onoff and ramp,
24 h each, seeded Poisson arrivals with a slow few-percent wander; the peak is 7.5 replicas'
worth at the target, so maxReplicas 16 never binds by design. A flap is a scale-down undone by
a scale-up within 300 s; steady segments are minutes whose surrounding 10 minutes all have a
one-minute rate within +-10% of their mean. Recorded traffic (`_sim_real_traces.py`): the
Azure LLM 'conv' hour as recorded and tiled to 24 h (`azure-conv`, `azure-conv-24h`), and
`--trace FILE` for a user's own (Azure LLM CSV, BurstGPT CSV, Mooncake JSONL). The `oracle`
row is a bound, not an autoscaler: each minute's load known ahead, pods ready at once.

    PYTHONPATH=operator:. .venv/bin/python bench/autoscale_sim.py            # the table
    PYTHONPATH=operator:. .venv/bin/python bench/autoscale_sim.py --check --json sim.json

`--check` exits 1 unless embedfleet uses >= 60% fewer GPU-hours than the fixed peak fleet on
diurnal and onoff, has no more SLO-violation minutes than HPA on any trace and fewer on spike,
never reverses a scale-down inside a steady segment, and on the recorded traces uses no more
GPU-hours than HPA and costs less than the fixed fleet with at most 5 more SLO-violation
minutes a day (these two do not hold yet: BENCHMARKS.md). Only numpy, the standard library and
embedfleet_operator.policy are imported."""

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
import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from bench._sim_cluster import SimConfig
from bench._sim_policies import (
    POLICY_NAMES,
    Autoscaler,
    Embedfleet,
    EmbedfleetZero,
    Fixed,
    Hpa,
    Knative,
    Oracle,
)
from bench._sim_real_traces import REAL_TRACE_NAMES, TraceFormatError, file_trace, shipped_trace
from bench._sim_run import RunResult, simulate
from bench._sim_traces import TRACE_NAMES, Trace, make_trace

ALL_TRACES = (*TRACE_NAMES, *REAL_TRACE_NAMES)

SAVING_TRACES = ("diurnal", "onoff")  # where embedfleet must save >= 60% against the fixed fleet
MIN_SAVING = 0.60
EXTRA_SLO_MINUTES_PER_DAY = 5  # on real traffic, against the fixed peak-sized fleet


# --------------------------------------------------------------------------- arguments
def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what}: a comma list of {', '.join(known)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--traces", default=",".join(ALL_TRACES), help="comma list")
    parser.add_argument(
        "--trace", type=Path, action="append", default=[], metavar="FILE",
        help="also replay this recorded traffic (Azure LLM CSV, BurstGPT CSV, Mooncake JSONL, "
        "or second,scaled_tokens), as recorded; repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--trace-peak-replicas", type=float, default=None,
        help="scale each --trace so its busiest minute is this many replicas' worth at target",
    )  # fmt: skip
    parser.add_argument("--policies", default=",".join(POLICY_NAMES), help="comma list")
    parser.add_argument("--capacity", type=float, default=50_000.0, help="tokens/s per replica")
    parser.add_argument("--request-tokens", type=float, default=500.0, help="mean request size")
    parser.add_argument("--batch-seconds", type=float, default=0.05, help="fixed batch step")
    parser.add_argument("--slo", type=float, default=2.0, help="p95 latency SLO, seconds")
    parser.add_argument(
        "--start-delay", type=float, nargs=2, default=(60.0, 180.0), metavar=("MIN", "MAX")
    )
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=16)
    parser.add_argument("--target", type=float, default=65.0, help="utilisation target, percent")
    parser.add_argument(
        "--peak-replicas", type=float, default=7.5, help="trace peak, replicas' worth at target"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if an acceptance fails")
    args = parser.parse_args(argv)
    try:
        args.traces = _names(args.traces, ALL_TRACES, "--traces")
        args.policies = _names(args.policies, POLICY_NAMES, "--policies")
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    if not 0 < args.start_delay[0] <= args.start_delay[1]:
        parser.error("--start-delay MIN MAX needs 0 < MIN <= MAX")
    if not 1 <= args.min_replicas <= args.max_replicas:
        # From zero, only an activator sees the first request: the embedfleet-zero row has one.
        parser.error(
            "need 1 <= --min-replicas <= --max-replicas (minReplicas 0 with the activator is "
            "the embedfleet-zero policy)"
        )
    return args


def config_from(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        capacity=args.capacity,
        request_tokens=args.request_tokens,
        batch_seconds=args.batch_seconds,
        slo_seconds=args.slo,
        start_delay=(args.start_delay[0], args.start_delay[1]),
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_percent=args.target,
        seed=args.seed,
    )


# --------------------------------------------------------------------------- runs
def make_policy(name: str, config: SimConfig, trace: Trace) -> Autoscaler:
    if name == "embedfleet":
        return Embedfleet(config)
    if name == "embedfleet-zero":
        return EmbedfleetZero(config)
    if name == "hpa":
        return Hpa(config)
    if name == "knative":
        return Knative(config)
    if name == "oracle":
        return Oracle(config, trace.arrivals)
    return Fixed(config, config.replicas_for(trace.peak_tokens_per_s))


def make_traces(
    config: SimConfig,
    names: Sequence[str],
    peak_replicas: float,
    files: Sequence[Path] = (),
    file_peak_replicas: float | None = None,
) -> list[Trace]:
    """The synthetic traces at `peak_replicas`' worth, the shipped recorded ones as they are
    scaled in their file, and the user's files (as recorded, or at `file_peak_replicas`)."""
    worth = config.capacity * config.target_percent / 100
    peak = peak_replicas * worth
    made = [
        shipped_trace(n)
        if n in REAL_TRACE_NAMES
        else make_trace(
            n, peak_tokens_per_s=peak, request_tokens=config.request_tokens, seed=config.seed
        )
        for n in names
    ]
    wanted = file_peak_replicas * worth if file_peak_replicas is not None else None
    return made + [file_trace(f, peak_tokens_per_s=wanted) for f in files]


def run_all(
    config: SimConfig,
    traces: Sequence[str],
    policies: Sequence[str],
    peak_replicas: float,
    files: Sequence[Path] = (),
    file_peak_replicas: float | None = None,
) -> tuple[list[Trace], list[RunResult]]:
    made = make_traces(config, traces, peak_replicas, files, file_peak_replicas)
    results: list[RunResult] = []
    for trace in made:
        # Autoscalers start with what the first minute needs, ready; the fixed fleet with its own.
        first_minute = config.replicas_for(sum(trace.arrivals[:60]) / 60)
        for name in policies:
            policy = make_policy(name, config, trace)
            initial = policy.replicas if isinstance(policy, Fixed) else first_minute
            # The oracle's pods start at once: it is the bound, not a contender.
            fleet = replace(config, start_delay=(1e-9, 1e-9)) if name == "oracle" else config
            results.append(simulate(trace, policy, fleet, initial))
    return made, results


# --------------------------------------------------------------------------- acceptance
def acceptance(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Each check: what, passed (None: not run, a trace or policy was left out), detail."""
    by = {(r.trace, r.policy): r for r in results}
    traces = list(dict.fromkeys(r.trace for r in results))  # in run order
    checks: list[dict[str, Any]] = []

    def check(what: str, passed: bool | None, detail: str) -> None:
        checks.append({"check": what, "passed": passed, "detail": detail})

    for trace in SAVING_TRACES:
        ours, fixed = by.get((trace, "embedfleet")), by.get((trace, "fixed"))
        what = f"{trace}: embedfleet >= {MIN_SAVING:.0%} fewer GPU-hours than the fixed fleet"
        if ours is None or fixed is None:
            check(what, None, "not run")
            continue
        saving = 1 - ours.gpu_hours / fixed.gpu_hours
        detail = (
            f"{ours.gpu_hours:.1f} vs {fixed.gpu_hours:.1f} GPU-h ({fixed.peak_replicas} "
            f"fixed replicas): {saving:.1%} fewer"
        )
        check(what, saving >= MIN_SAVING, detail)
    for trace in traces:
        ours, hpa = by.get((trace, "embedfleet")), by.get((trace, "hpa"))
        strict = trace == "spike"
        what = f"{trace}: embedfleet SLO-violation minutes {'<' if strict else '<='} HPA's"
        if ours is None or hpa is None:
            check(what, None, "not run")
            continue
        ok = ours.slo_minutes < hpa.slo_minutes if strict else ours.slo_minutes <= hpa.slo_minutes
        check(what, ok, f"{ours.slo_minutes} vs {hpa.slo_minutes}")
    for trace in REAL_TRACE_NAMES:
        ours, hpa, fixed = (by.get((trace, p)) for p in ("embedfleet", "hpa", "fixed"))
        what = f"{trace}: embedfleet GPU-hours <= HPA's"
        if ours is None or hpa is None:
            check(what, None, "not run")
        else:
            check(what, ours.gpu_hours <= hpa.gpu_hours,
                  f"{ours.gpu_hours:.1f} vs {hpa.gpu_hours:.1f}")  # fmt: skip
        allowed = EXTRA_SLO_MINUTES_PER_DAY * (24.0 if trace.endswith("-24h") else 1.0) / 24
        what = (
            f"{trace}: embedfleet cheaper than the fixed fleet, at most {allowed:g} more "
            "SLO-violation minutes"
        )
        if ours is None or fixed is None:
            check(what, None, "not run")
        else:
            check(what,
                  ours.gpu_hours < fixed.gpu_hours
                  and ours.slo_minutes <= fixed.slo_minutes + allowed,
                  f"{ours.gpu_hours:.1f} vs {fixed.gpu_hours:.1f} GPU-h, "
                  f"{ours.slo_minutes} vs {fixed.slo_minutes} SLO-violation minutes")  # fmt: skip
    ours_runs = [r for r in results if r.policy == "embedfleet"]
    detail = ", ".join(f"{r.trace} {r.steady_flaps}" for r in ours_runs) or "not run"
    check(
        "embedfleet reverses no scale-down inside a steady segment",
        all(r.steady_flaps == 0 for r in ours_runs) if ours_runs else None,
        detail,
    )
    return checks


# --------------------------------------------------------------------------- output
def markdown_table(results: Sequence[RunResult]) -> str:
    fixed = {r.trace: r.gpu_hours for r in results if r.policy == "fixed"}
    lines = [
        "| trace | policy | GPU-hours | vs fixed | SLO-violation min | worst-minute p95 s "
        "| scale events | peak replicas | flaps (in steady segments) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        saving = f"{r.gpu_hours / fixed[r.trace] - 1:+.0%}" if r.trace in fixed else "-"
        lines.append(
            f"| {r.trace} | {r.policy} | {r.gpu_hours:.1f} | {saving} | {r.slo_minutes} "
            f"| {r.worst_p95_s:.2f} | {r.scale_events} | {r.peak_replicas} "
            f"| {r.flaps} ({r.steady_flaps}) |"
        )
    return "\n".join(lines)


def trace_table(traces: Sequence[Trace], config: SimConfig) -> str:
    lines = [
        "| trace | mean tokens/s | peak 1-min tokens/s | mean / peak | fixed fleet | steady min |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in traces:
        lines.append(
            f"| {t.name} | {t.mean_tokens_per_s:,.0f} | {t.peak_tokens_per_s:,.0f} "
            f"| {t.mean_tokens_per_s / t.peak_tokens_per_s:.2f} "
            f"| {config.replicas_for(t.peak_tokens_per_s)} "
            f"| {sum(t.steady_minutes)} of {len(t.steady_minutes)} |"
        )
    return "\n".join(lines)


def print_report(report: dict[str, Any], traces: Sequence[Trace], config: SimConfig) -> None:
    print(f"\n{report['command']}\n{report['date']}")
    print(
        f"capacity {config.capacity:,.0f} tokens/s per replica, requests of "
        f"{config.request_tokens:g} tokens, service {config.service_seconds * 1000:.0f} ms, "
        f"SLO p95 <= {config.slo_seconds:g} s per minute, pods ready after "
        f"{config.start_delay[0]:g}-{config.start_delay[1]:g} s, replicas "
        f"{config.min_replicas}-{config.max_replicas}, target {config.target_percent:g}%, "
        f"seed {config.seed}"
    )
    print(f"\n{trace_table(traces, config)}\n")
    for t in traces:
        print(f"- {t.name}: {t.description}")
    print(f"\n{markdown_table([RunResult(**r) for r in report['runs']])}\n")
    for run in report["runs"]:
        if run["policy"] == "embedfleet":
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(run["reasons"].items()))
            print(f"embedfleet on {run['trace']}: changes by rule: {reasons or 'none'}")
    print("\nacceptance:")
    for c in report["acceptance"]:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[c["passed"]]
        print(f"  {mark}  {c['check']}: {c['detail']}")
    print(f"\nsimulated {len(report['runs'])} runs in {report['wall_s']:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_from(args)
    started = time.perf_counter()
    try:
        traces, results = run_all(
            config, args.traces, args.policies, args.peak_replicas, args.trace,
            args.trace_peak_replicas,
        )  # fmt: skip
    except (OSError, TraceFormatError) as error:
        print(f"autoscale_sim: {error}", file=sys.stderr)
        return 2
    runs = []
    for r in results:
        run = asdict(r)
        del run["events"]
        runs.append(run)
    report: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "peak_replicas_worth": args.peak_replicas,
        "traces": [
            {k: v for k, v in asdict(t).items() if k not in ("arrivals", "steady_minutes")}
            for t in traces
        ],
        "runs": runs,
        "acceptance": acceptance(results),
        "wall_s": time.perf_counter() - started,
    }
    print_report(report, traces, config)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        full = {**report, "events": {f"{r.trace}/{r.policy}": r.events for r in results}}
        args.json.write_text(json.dumps(full, indent=2, default=asdict) + "\n")
        print(f"wrote {args.json}")
    failed = [c for c in report["acceptance"] if c["passed"] is False]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
