"""One simulation run of bench/autoscale_sim.py (a trace under a policy) and what is measured of
it: GPU-hours, SLO-violation minutes, scale events, peak replicas and flaps."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from bench._sim_cluster import Cluster, SimConfig
from bench._sim_policies import Autoscaler
from bench._sim_traces import Trace

FLAP_WINDOW_S = 300  # a scale-down undone by a scale-up this soon is a flap


@dataclass(frozen=True)
class ScaleEvent:
    time: int
    before: int
    after: int
    reason: str


@dataclass
class RunResult:
    trace: str
    policy: str
    gpu_hours: float
    slo_minutes: int  # minutes whose traffic-weighted p95 latency exceeds the SLO
    worst_p95_s: float  # the worst minute's p95
    scale_events: int  # changes of the replica count
    peak_replicas: int
    mean_replicas: float
    pods_created: int
    flaps: int  # scale-downs undone by a scale-up within FLAP_WINDOW_S
    steady_flaps: int  # those of them inside one steady segment of the trace
    reasons: dict[str, int]  # the rule behind each change of the replica count
    wall_s: float
    events: list[ScaleEvent] = field(default_factory=list, repr=False)


def flaps(events: list[ScaleEvent], steady: list[bool]) -> tuple[int, int]:
    """(scale-downs reversed by a scale-up within FLAP_WINDOW_S, those whose down, up and every
    minute between lie in steady minutes of the trace)."""
    total = on_steady = 0
    last = len(steady) - 1
    for k, down in enumerate(events):
        if down.after >= down.before:
            continue
        for up in events[k + 1 :]:
            if up.time - down.time > FLAP_WINDOW_S:
                break
            if up.after > up.before:
                total += 1
                minutes = range(min(down.time // 60, last), min(up.time // 60, last) + 1)
                on_steady += all(steady[m] for m in minutes)
                break
    return total, on_steady


def simulate(trace: Trace, policy: Autoscaler, config: SimConfig, initial: int) -> RunResult:
    """Runs `trace` second by second; `policy` decides every `policy.period` seconds."""
    started = time.perf_counter()
    cluster = Cluster(config, initial)
    policy.start(0, cluster)
    observe = policy.observe if policy.per_second else None
    wakes = policy.wakes_from_zero
    period, slo = policy.period, config.slo_seconds
    step, scale_to, decide = cluster.step, cluster.scale_to, policy.decide
    gpu_seconds = 0
    peak = initial
    slo_minutes, worst = 0, 0.0
    events: list[ScaleEvent] = []
    for second, arriving in enumerate(trace.arrivals):
        step(second, arriving)
        gpu_seconds += cluster.pod_count
        now = second + 1
        if observe is not None:
            observe(now, cluster)
        if now % 60 == 0:
            p95 = cluster.close_minute()
            if p95 is not None:
                slo_minutes += p95 > slo
                worst = max(worst, p95)
        if wakes and cluster.pod_count == 0:
            woken = policy.activate(now, cluster)
            if woken:
                scale_to(now, woken)
                events.append(ScaleEvent(now, 0, woken, policy.last_reason))
                peak = max(peak, woken)
        if now % period == 0:
            before = cluster.pod_count
            after = decide(now, cluster)
            if after != before:
                scale_to(now, after)
                events.append(ScaleEvent(now, before, after, policy.last_reason))
                peak = max(peak, after)
    total, steady = flaps(events, trace.steady_minutes)
    return RunResult(
        trace=trace.name,
        policy=policy.name,
        gpu_hours=gpu_seconds / 3600,
        slo_minutes=slo_minutes,
        worst_p95_s=worst,
        scale_events=len(events),
        peak_replicas=peak,
        mean_replicas=gpu_seconds / max(1, len(trace.arrivals)),
        pods_created=cluster.pods_created,
        flaps=total,
        steady_flaps=steady,
        reasons=dict(Counter(e.reason for e in events)),
        wall_s=time.perf_counter() - started,
        events=events,
    )
