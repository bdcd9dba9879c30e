"""Table-driven tests of the pure autoscaling policy: one case per rule, each with the replica
count and the reason it must give."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from embedfleet_operator.fleet import Observation, PodMetrics, PodObservation
from embedfleet_operator.policy import (
    Decision,
    History,
    ScalingSpec,
    decide,
    from_zero,
    remember,
)

NOW = 10_000.0


def load(
    util: float = 0.0,
    rps: float = 0.0,
    tps: float = 0.0,
    queue: float = 0.0,
    gpu: float | None = None,
) -> PodMetrics:
    return PodMetrics(
        requests_per_second=rps,
        tokens_per_second=tps,
        engine_utilization=util / 100,
        gpu_utilization=gpu,
        queue_tokens=queue,
        queue_requests=1.0 if queue else 0.0,
    )


def fleet(
    current: int,
    *pods: PodMetrics | None,
    unready: tuple[str, ...] = (),
    start: float | None = None,
) -> Observation:
    return Observation(
        current_replicas=current,
        ready_pods=tuple(PodObservation(f"w-{i}", m) for i, m in enumerate(pods)),
        unready_pods=unready,
        worker_start_seconds=start,
    )


UTIL = ScalingSpec(min_replicas=1, max_replicas=20, target_utilization_percent=65)
RPS = ScalingSpec(min_replicas=1, max_replicas=20, target_requests_per_second=10)
TPS = ScalingSpec(min_replicas=1, max_replicas=20, target_tokens_per_second=1000)
BOTH = ScalingSpec(
    min_replicas=1, max_replicas=20, target_utilization_percent=65, target_requests_per_second=10
)
# minReplicas 0 with the default idle timeout (120 s) and stabilisation window (300 s).
ZERO = ScalingSpec(min_replicas=0, max_replicas=8, target_utilization_percent=65)
STARTED = NOW - 3600  # a history older than any window: the startup hold is over
BUSY = History(last_activity=NOW, started=STARTED)  # recently active, long running


def past(**fields: object) -> History:
    """A history that started long ago, with these fields."""
    return History(started=STARTED, **fields)  # type: ignore[arg-type]


def earlier_ticks(
    *ago_utilisation_queue: tuple[float, float, float],
) -> tuple[tuple[float, tuple[tuple[str, float], ...]], ...]:
    """Earlier ticks' fleet totals: (seconds ago, fleet utilisation percent summed, fleet
    queue tokens)."""
    return tuple(
        (NOW - ago, (("Utilization", util), ("TokensPerSecond", 0.0), ("RequestsPerSecond", 0.0),
                     ("QueueTokens", queue)))
        for ago, util, queue in ago_utilisation_queue
    )  # fmt: skip


@dataclass
class Case:
    name: str
    spec: ScalingSpec
    observation: Observation
    replicas: int
    reason: str
    history: History = field(default_factory=lambda: BUSY)
    limited: bool = False


CASES = [
    # A recommendation per target, HPA-style ratio.
    Case("utilisation above target scales to ceil(total/target)", UTIL,
         fleet(2, load(100), load(100)), 4, "UtilizationAboveTarget"),
    Case("GPU utilisation counts when NVML reports more than the engine", UTIL,
         fleet(1, load(10, gpu=0.95)), 2, "UtilizationAboveTarget"),
    Case("tokens/s per replica target", TPS,
         fleet(2, load(tps=1500), load(tps=1500)), 3, "TokensPerSecondAboveTarget"),
    Case("requests/s per replica target", RPS,
         fleet(1, load(rps=35)), 4, "RequestsPerSecondAboveTarget"),
    Case("the largest recommendation wins", BOTH,
         fleet(1, load(90, rps=48)), 5, "RequestsPerSecondAboveTarget"),
    Case("inside the tolerance band nothing moves", UTIL,
         fleet(2, load(70), load(70)), 2, "UtilizationWithinTarget"),
    # Scale up fast but rate-limited, counting pods already starting.
    Case("scale-up is limited to +4 pods per period from a small fleet", RPS,
         fleet(1, load(rps=200)), 5, "ScaleUpRateLimited"),
    Case("scale-up is limited to +100% per period from a large fleet",
         ScalingSpec(min_replicas=1, max_replicas=100, target_requests_per_second=10),
         fleet(8, *[load(rps=60)] * 8), 16, "ScaleUpRateLimited"),
    Case("a scale-up earlier in the same period counts against the limit", RPS,
         fleet(5, load(rps=150)), 5, "ScaleUpRateLimited",
         history=past(last_activity=NOW, scale_ups=((NOW - 5, 1),))),
    Case("pods still starting count as zero load: no overshoot", UTIL,
         fleet(4, load(100)), 4, "UtilizationWithinTarget"),
    Case("a ready pod without metrics counts as zero load when scaling up", UTIL,
         fleet(2, load(100), None), 2, "MetricsMissing"),
    Case("a queue growing on a saturated fleet scales up by arrivals over service", UTIL,
         fleet(2, load(95, tps=5000, queue=200_000), load(95, tps=5000, queue=200_000)),
         4, "QueueGrowing",
         history=past(last_activity=NOW, totals=earlier_ticks(
             (45, 190.0, 20_000.0), (30, 190.0, 45_000.0), (15, 190.0, 70_000.0)))),
    Case("pods still starting cover a growing queue: none added per tick of their start", UTIL,
         fleet(6, load(95, tps=5000, queue=200_000), load(95, tps=5000, queue=200_000)),
         6, "UtilizationWithinTarget",
         history=past(last_activity=NOW, totals=earlier_ticks(
             (45, 190.0, 20_000.0), (30, 190.0, 20_000.0), (15, 190.0, 20_000.0)))),
    Case("a queue from a burst on a fleet below saturation is no reason to scale", UTIL,
         fleet(2, load(60, tps=5000, queue=40_000), load(60, tps=5000, queue=40_000)),
         2, "UtilizationWithinTarget",
         history=past(last_activity=NOW, totals=earlier_ticks((15, 120.0, 20_000.0)))),
    # Grown over the window but draining now: the queue rule adds no pod that would be
    # ready only after the backlog is gone (here 400K tokens draining at 13K/s: 30 s).
    Case("a queue draining before a new pod could be ready adds no pod", UTIL,
         fleet(2, load(95, tps=5000, queue=200_000), load(95, tps=5000, queue=200_000),
               start=120), 3, "UtilizationAboveTarget",
         history=past(last_activity=NOW, totals=earlier_ticks(
             (45, 190.0, 0.0), (30, 190.0, 300_000.0), (15, 190.0, 600_000.0)))),
    Case("a queue still there when a new pod is ready scales by arrivals over service", UTIL,
         fleet(2, load(95, tps=5000, queue=200_000), load(95, tps=5000, queue=200_000),
               start=20), 4, "QueueGrowing",
         history=past(last_activity=NOW, totals=earlier_ticks(
             (45, 190.0, 0.0), (30, 190.0, 300_000.0), (15, 190.0, 600_000.0)))),
    Case("a large but shrinking queue is no reason to scale", UTIL,
         fleet(2, load(95, tps=5000, queue=20_000), load(95, tps=5000, queue=20_000)),
         3, "UtilizationAboveTarget",
         history=past(last_activity=NOW, totals=earlier_ticks((15, 190.0, 60_000.0)))),
    # The targets see the fleet's load over the metric window, not one tick's.
    Case("one busy tick after quiet ones is within the target over the window", UTIL,
         fleet(2, load(100), load(100)), 2, "UtilizationWithinTarget",
         history=past(last_activity=NOW, totals=earlier_ticks(
             (45, 20.0, 0.0), (30, 20.0, 0.0), (15, 20.0, 0.0)))),
    Case("ticks older than the window are forgotten", UTIL,
         fleet(2, load(100), load(100)), 4, "UtilizationAboveTarget",
         history=past(last_activity=NOW, totals=earlier_ticks((75, 20.0, 0.0), (60, 20.0, 0.0)))),
    # Scale down slowly: stabilisation window and hysteresis.
    Case("scale-down waits for the highest recommendation in the window", UTIL,
         fleet(4, load(10), load(10), load(10), load(10)), 4, "ScaleDownStabilized",
         history=past(last_activity=NOW, recommendations=((NOW - 200, 4), (NOW - 100, 3)))),
    Case("scale-down goes to the window's highest, not all the way", UTIL,
         fleet(4, load(10), load(10), load(10), load(10)), 3, "ScaleDownStabilized",
         history=past(last_activity=NOW, recommendations=((NOW - 400, 4), (NOW - 100, 3)))),
    Case("scale-down after the window has passed", UTIL,
         fleet(4, load(10), load(10), load(10), load(10)), 1, "UtilizationBelowTarget",
         history=past(last_activity=NOW, recommendations=((NOW - 301, 4),)), limited=True),
    Case("hysteresis: load that would just fit fewer replicas at the target stays put", UTIL,
         fleet(2, load(30), load(30)), 2, "UtilizationWithinTarget"),
    Case("hysteresis: load that fits with headroom scales down", UTIL,
         fleet(2, load(25), load(25)), 1, "UtilizationBelowTarget", limited=True),
    # A history younger than the window (new service, operator restart) holds the fleet.
    Case("the first tick of a history scales nothing down", UTIL,
         fleet(3, load(10), load(10), load(10)), 3, "StartupHold", history=History()),
    Case("a history younger than the window still holds", UTIL,
         fleet(3, load(10), load(10), load(10)), 3, "StartupHold",
         history=History(started=NOW - 200, last_activity=NOW)),
    Case("the startup hold never holds back a scale-up", UTIL,
         fleet(2, load(100), load(100)), 4, "UtilizationAboveTarget", history=History()),
    # Idle timeout: the way to zero.
    Case("idle for the timeout with minReplicas 0 goes to zero",
         ScalingSpec(min_replicas=0, max_replicas=8, target_utilization_percent=65),
         fleet(6, *[load(0)] * 6), 0, "Idle",
         history=past(last_activity=NOW - 301, recommendations=((NOW - 10, 6),)),
         limited=True),
    Case("idle for the timeout but not the stabilisation window holds",
         ScalingSpec(min_replicas=0, max_replicas=8, target_utilization_percent=65,
                     idle_timeout_seconds=120, stabilization_seconds=300),
         fleet(6, *[load(0)] * 6), 6, "ScaleDownStabilized",
         history=past(last_activity=NOW - 200, recommendations=((NOW - 10, 6),))),
    Case("idle for the timeout when it is the longer of the two goes to zero",
         ScalingSpec(min_replicas=0, max_replicas=8, target_utilization_percent=65,
                     idle_timeout_seconds=600, stabilization_seconds=60),
         fleet(2, load(0), load(0)), 0, "Idle",
         history=past(last_activity=NOW - 600), limited=True),
    Case("idle with minReplicas 1 comes down through the window, not straight", UTIL,
         fleet(6, *[load(0)] * 6), 6, "ScaleDownStabilized",
         history=past(last_activity=NOW - 1000, recommendations=((NOW - 10, 6),))),
    Case("idle shorter than the timeout does not go to zero",
         ScalingSpec(min_replicas=0, max_replicas=8, target_utilization_percent=65),
         fleet(3, load(0), load(0), load(0)), 3, "ScaleDownStabilized",
         history=past(last_activity=NOW - 60, recommendations=((NOW - 10, 3),))),
    # A measured worker start longer than both: going to zero and back costs a start, so
    # idle must last one first (ski rental).
    Case("idle for the timeout and the window but not a measured start holds",
         ZERO, fleet(2, load(0), load(0), start=400), 2, "ScaleDownStabilized",
         history=past(last_activity=NOW - 350, recommendations=((NOW - 10, 2),))),
    Case("idle for the measured start when it is the longest bound goes to zero",
         ZERO, fleet(2, load(0), load(0), start=400), 0, "Idle",
         history=past(last_activity=NOW - 400), limited=True),
    Case("a measured start shorter than the window changes nothing",
         ZERO, fleet(2, load(0), load(0), start=30), 0, "Idle",
         history=past(last_activity=NOW - 301), limited=True),
    Case("idle needs every ready pod measured",
         ScalingSpec(min_replicas=0, max_replicas=8, target_utilization_percent=65),
         fleet(3, load(0), load(0), None), 3, "MetricsMissing",
         history=past(last_activity=NOW - 1000)),
    # Missing or stale metrics never scale down.
    Case("a pod without fresh metrics blocks a scale-down", UTIL,
         fleet(3, load(5), None, load(5)), 3, "MetricsMissing",
         history=past(last_activity=NOW)),
    Case("no metrics at all holds the fleet", UTIL,
         fleet(3, None, None, None), 3, "MetricsMissing"),
    Case("missing metrics do not stop a scale-up (the unmeasured pod counts as zero)", RPS,
         fleet(3, load(rps=20), None, load(rps=20)), 4, "RequestsPerSecondAboveTarget"),
    # A pod that was serving and is not ready now (frozen, restarting) may hold load no
    # metric shows; one never ready (Pending, an image that cannot be pulled) holds nothing.
    Case("a pod that stopped serving blocks a scale-down", UTIL,
         fleet(3, load(5), load(5), unready=("w-9",)), 3, "ReplicasNotReady",
         history=past(last_activity=NOW, last_ready=(("w-9", NOW - 20),))),
    Case("a pod never ready blocks nothing", UTIL,
         fleet(3, load(5), load(5), unready=("w-9",)), 1, "UtilizationBelowTarget",
         history=past(last_activity=NOW), limited=True),
    Case("a pod ready long ago blocks nothing", UTIL,
         fleet(3, load(5), load(5), unready=("w-9",)), 1, "UtilizationBelowTarget",
         history=past(last_activity=NOW, last_ready=(("w-9", NOW - 601),)), limited=True),
    Case("a pod that stopped serving does not stop a scale-up", UTIL,
         fleet(3, load(150), load(150), unready=("w-9",)), 5, "UtilizationAboveTarget",
         history=past(last_activity=NOW, last_ready=(("w-9", NOW - 20),))),
    Case("idle needs every pod that served ready again",
         ScalingSpec(min_replicas=0, max_replicas=8, target_utilization_percent=65),
         fleet(3, load(0), load(0), unready=("w-9",)), 3, "ReplicasNotReady",
         history=past(last_activity=NOW - 1000, last_ready=(("w-9", NOW - 20),))),
    Case("a fleet above maxReplicas still comes down to it with a pod not ready",
         ScalingSpec(min_replicas=1, max_replicas=2, target_utilization_percent=65),
         fleet(4, load(5), load(5), unready=("w-9",)), 2, "ReplicasNotReady", limited=True,
         history=past(last_activity=NOW, last_ready=(("w-9", NOW - 20),))),
    # Clamp.
    Case("clamped at maxReplicas", ScalingSpec(min_replicas=1, max_replicas=4,
         target_utilization_percent=65), fleet(3, load(100), load(100), load(100)),
         4, "UtilizationAboveTarget", limited=True),
    Case("raised to minReplicas", ScalingSpec(min_replicas=3, max_replicas=8,
         target_utilization_percent=65), fleet(1, load(10)), 3, "UtilizationWithinTarget",
         limited=True),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_policy_rule(case: Case) -> None:
    decision = decide(case.observation, case.spec, case.history, NOW)
    assert (decision.replicas, decision.reason) == (case.replicas, case.reason), decision.message
    assert decision.limited == case.limited, decision.message
    assert decision.message


def test_clamp_message_says_which_bound() -> None:
    spec = ScalingSpec(min_replicas=1, max_replicas=4, target_utilization_percent=65)
    decision = decide(fleet(3, *[load(100)] * 3), spec, BUSY, NOW)
    assert "maxReplicas 4" in decision.message


@pytest.mark.parametrize(
    ("spec", "start", "idle", "says"),
    [
        (dataclasses.replace(ZERO, idle_timeout_seconds=600), 400.0, 600,
         "600s (the idle timeout;"),
        (ZERO, 30.0, 300, "300s (the stabilisation window;"),
        (ZERO, 400.0, 400, "400s (the measured worker start;"),
        (ZERO, None, 300, "measured worker start unknown"),
    ],
)  # fmt: skip
def test_the_idle_message_says_which_bound_applied(
    spec: ScalingSpec, start: float | None, idle: float, says: str
) -> None:
    decision = decide(fleet(1, load(0), start=start), spec, past(last_activity=NOW - idle), NOW)
    assert decision.reason == "Idle"
    assert says in decision.message, decision.message


def test_a_scale_up_says_when_its_pods_are_expected_ready() -> None:
    decision = decide(fleet(2, load(100), load(100), start=84.6), UTIL, BUSY, NOW)
    assert decision.replicas == 4
    assert "new workers expected ready in about 85s (the measured start)" in decision.message
    unknown = decide(fleet(2, load(100), load(100)), UTIL, BUSY, NOW)
    assert "expected ready" not in unknown.message
    steady = decide(fleet(2, load(60), load(60), start=84.6), UTIL, BUSY, NOW)
    assert "expected ready" not in steady.message  # nothing starts


def test_scaling_from_zero_says_the_expected_wait() -> None:
    decision = from_zero(ZERO, 42.0)
    assert (decision.replicas, decision.reason) == (1, "ScaledFromZero")
    assert "expected ready in about 42s" in decision.message
    assert "expected" not in from_zero(ZERO, None).message
    assert from_zero(dataclasses.replace(ZERO, min_replicas=2), None).replicas == 2


def test_remember_keeps_the_window_and_the_period() -> None:
    spec = ScalingSpec(min_replicas=1, max_replicas=8, target_utilization_percent=65,
                       stabilization_seconds=300, tick_seconds=15)  # fmt: skip
    history = past(
        recommendations=((NOW - 400, 8), (NOW - 100, 5)),
        scale_ups=((NOW - 30, 1), (NOW - 5, 2)),
        last_activity=NOW - 50,
        totals=earlier_ticks((75, 10.0, 9.0), (45, 190.0, 7.0)),
    )
    observation = fleet(2, load(100), load(100))
    decision = decide(observation, spec, history, NOW)
    after = remember(history, observation, decision, spec, NOW)
    assert after.recommendations == ((NOW - 100, 5), (NOW, decision.recommendation))
    assert after.scale_ups == ((NOW - 5, 2), (NOW, 2))
    assert after.last_activity == NOW  # a busy engine is activity even before a request ends
    queues = [(when, dict(totals)["QueueTokens"]) for when, totals in after.totals]
    assert queues == [(NOW - 45, 7.0), (NOW, 0.0)]  # the metric window's (60 s)
    assert [when for when, _ in after.totals] == [NOW - 45, NOW]
    assert dict(after.totals[-1][1])["Utilization"] == 200.0
    assert after.started == STARTED
    assert remember(History(), observation, decision, spec, NOW).started == NOW


def test_remember_activity_comes_from_requests_and_queues_not_silence() -> None:
    spec = UTIL
    quiet = fleet(1, load(0))
    history = remember(History(last_activity=NOW - 50), quiet, decide(quiet, spec, BUSY, NOW),
                       spec, NOW)  # fmt: skip
    assert history.last_activity == NOW - 50
    before = History(last_activity=NOW - 50, last_ready=(("w-1", NOW - 30),))
    stopped = fleet(2, load(0), unready=("w-1",))
    history = remember(before, stopped, decide(stopped, spec, before, NOW), spec, NOW)
    assert history.last_activity == NOW  # its load is unknown: idle starts once it is ready
    assert dict(history.last_ready) == {"w-0": NOW, "w-1": NOW - 30}
    unmeasured = fleet(1, None)
    history = remember(history, unmeasured, decide(unmeasured, spec, history, NOW), spec, NOW)
    assert history.last_activity == NOW  # unknown load is treated as activity


def test_steady_load_never_oscillates() -> None:
    """A fleet fed the same load tick after tick settles and stays: hysteresis plus the window."""
    spec = ScalingSpec(min_replicas=1, max_replicas=20, target_utilization_percent=65,
                       stabilization_seconds=60, tick_seconds=15)  # fmt: skip
    for demand in (40.0, 64.0, 66.0, 71.0, 130.0, 200.0, 333.0):
        history, replicas, seen = History(), 1, []
        for tick in range(60):
            now = NOW + tick * 15
            per_pod = min(100.0, demand / replicas)
            observation = fleet(replicas, *[load(per_pod, rps=1)] * replicas)
            decision: Decision = decide(observation, spec, history, now)
            history = remember(history, observation, decision, spec, now)
            replicas = decision.replicas
            seen.append(replicas)
        settled = seen[20:]
        assert len(set(settled)) == 1, (demand, seen)
        assert settled[0] * 65 * 1.1 >= demand, (demand, seen)
