"""The autoscaling policy: a pure decision pipeline in the manner of the Kubernetes HPA. It takes
what the observer measured, the service's autoscaling spec, the policy's own history and `now`,
and returns the replica count with the rule that decided it. No I/O, no clock reads: the
operator and `bench/autoscale_sim.py` run this same code."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from embedfleet_operator.fleet import FleetMetrics, Observation, fleet_metrics
from embedfleet_operator.spec import AutoscalingSpec, EmbeddingServiceSpec, EngineSpec

METRIC_WINDOW_TICKS = 4  # the targets' averaging window: 60 s at the default 15 s tick
# A pod that was ready this recently and is not now (frozen, restarting after a crash) holds
# scale-downs: its clients' load is unknown. Longer than a frozen pod takes to be restarted by
# its liveness probe (60 s) and to load again; a pod never ready (Pending, a pull that fails)
# holds nothing, so a fleet that cannot grow still comes down.
LOST_POD_HOLD_SECONDS = 600.0


@dataclass(frozen=True)
class ScalingSpec:
    min_replicas: int
    max_replicas: int
    target_utilization_percent: float | None = None
    target_tokens_per_second: float | None = None
    target_requests_per_second: float | None = None
    idle_timeout_seconds: float = AutoscalingSpec.idle_timeout_seconds
    stabilization_seconds: float = AutoscalingSpec.scale_down_stabilization_seconds
    tick_seconds: float = 15.0
    tolerance: float = 0.1  # HPA's band around the target where nothing moves
    # Scale down only once load fits the fewer replicas at (1 - headroom) of the target, so
    # a load near a replica boundary does not flap between two counts.
    scale_down_headroom: float = 0.1
    scale_up_percent: float = 100.0  # per tick period: the larger of this and scale_up_pods
    scale_up_pods: int = 4
    # A fleet-wide backlog worth reacting to: one batch (spec.engine.maxBatchTokens).
    queue_threshold_tokens: float = EngineSpec.max_batch_tokens
    # ...only when the fleet was busy this share of the tick: a burst of a second or two
    # queues up and drains within the tick at a lower mean (real traffic's busiest second is
    # 2.7-6x its busiest minute's mean), and a pod started for it would come minutes late.
    queue_saturation_percent: float = 90.0
    # The targets compare the fleet's load averaged over this window (HPA's adapters and
    # Knative's stable window use 60 s), and queue growth is measured over it: one tick of
    # bursty traffic swings widely, and the scale-down window keeps the highest
    # recommendation, so a spiky 15 s sample was held for 5 minutes.
    metric_window_seconds: float = 60.0

    @classmethod
    def from_spec(cls, spec: EmbeddingServiceSpec, *, tick_seconds: float) -> ScalingSpec:
        auto = spec.autoscaling

        def number(value: int | None) -> float | None:
            return None if value is None else float(value)

        return cls(
            min_replicas=auto.min_replicas,
            max_replicas=auto.max_replicas,
            target_utilization_percent=number(auto.target_gpu_utilization_percent),
            target_tokens_per_second=number(auto.target_tokens_per_second_per_replica),
            target_requests_per_second=number(auto.target_requests_per_second_per_replica),
            idle_timeout_seconds=float(auto.idle_timeout_seconds),
            stabilization_seconds=float(auto.scale_down_stabilization_seconds),
            tick_seconds=tick_seconds,
            metric_window_seconds=METRIC_WINDOW_TICKS * tick_seconds,
            queue_threshold_tokens=float(spec.engine.max_batch_tokens),
        )


@dataclass(frozen=True)
class History:
    """What the policy remembers between ticks (kept by the caller, updated by `remember`)."""

    recommendations: tuple[tuple[float, int], ...] = ()  # (time, replicas) in the window
    scale_ups: tuple[tuple[float, int], ...] = ()  # (time, replicas before) in the tick period
    last_activity: float | None = None
    started: float | None = None  # the first tick this history saw (None: this is the first)
    # (time, fleet totals: one per target rule, and the queue) of the ticks in the metric window
    totals: tuple[tuple[float, tuple[tuple[str, float], ...]], ...] = ()
    last_ready: tuple[tuple[str, float], ...] = ()  # (pod, when last seen ready), for the hold


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str  # CamelCase, the rule that decided
    message: str
    recommendation: int  # before stabilisation and rate limits: what history remembers
    limited: bool = False  # at minReplicas or maxReplicas (ScalingLimited)
    metrics: FleetMetrics | None = field(default=None, compare=False)


@dataclass(frozen=True)
class _Recommendation:
    replicas: int
    reason: str
    message: str


def _fleet_totals(observation: Observation) -> dict[str, float]:
    """This tick's fleet-wide load per target rule, in the target's unit, and the queue (for
    its growth over the window)."""
    reporting = observation.reporting
    return {
        "Utilization": sum(m.utilization_percent for m in reporting),
        "TokensPerSecond": sum(m.tokens_per_second for m in reporting),
        "RequestsPerSecond": sum(m.requests_per_second for m in reporting),
        "QueueTokens": sum(m.queue_tokens for m in reporting),
    }


def _windowed_totals(
    observation: Observation, spec: ScalingSpec, history: History, now: float
) -> dict[str, float]:
    """Each rule's fleet total averaged over the ticks in the metric window, this one
    included. A fleet total is load in units of one pod's worth, so ticks with different
    fleet sizes average fairly."""
    current = _fleet_totals(observation)
    if not observation.reporting:
        return current
    ticks = [dict(t) for when, t in history.totals if now - when < spec.metric_window_seconds]
    ticks.append(current)
    return {rule: sum(t.get(rule, 0.0) for t in ticks) / len(ticks) for rule in current}


def _target_recommendations(
    observation: Observation, spec: ScalingSpec, totals: Mapping[str, float]
) -> list[tuple[str, float, float, str]]:
    """(rule, fleet total over the metric window, per-replica target, unit) for each
    configured target."""
    targets = [
        ("Utilization", spec.target_utilization_percent, totals["Utilization"], "% utilisation"),
        ("TokensPerSecond", spec.target_tokens_per_second, totals["TokensPerSecond"],
         " tokens/s"),
        ("RequestsPerSecond", spec.target_requests_per_second, totals["RequestsPerSecond"],
         " requests/s"),
    ]  # fmt: skip
    return [(rule, total, target, unit) for rule, target, total, unit in targets if target]


def _recommend_for_target(
    rule: str, total: float, target: float, unit: str, observation: Observation, spec: ScalingSpec
) -> _Recommendation:
    current, reporting = observation.current_replicas, len(observation.reporting)
    if reporting == 0:
        return _Recommendation(current, "MetricsMissing", "no ready worker reported metrics")
    per_ready = total / reporting
    if per_ready > target * (1 + spec.tolerance):
        # Pods still starting and ready pods without metrics count as zero load, so a slow
        # model load does not make the fleet overshoot (HPA's rule for unready pods).
        pods = max(current, len(observation.ready_pods))
        if total / pods > target * (1 + spec.tolerance):
            return _Recommendation(
                math.ceil(total / target), f"{rule}AboveTarget",
                f"{total / pods:.1f}{unit} per replica over {pods} replicas, target {target:g}",
            )  # fmt: skip
        return _Recommendation(
            current, f"{rule}WithinTarget",
            f"{per_ready:.1f}{unit} per ready replica; {pods - reporting} more are starting "
            f"or unmeasured, target {target:g}",
        )  # fmt: skip
    # Never below one here: only the idle rule may go to zero. The fewer replicas must carry
    # the load at (1 - headroom) of the target, the hysteresis that stops flapping.
    relaxed = max(1, math.ceil(total / (target * (1 - spec.scale_down_headroom))))
    if relaxed < current and not observation.missing:
        return _Recommendation(
            relaxed, f"{rule}BelowTarget",
            f"{total:.1f}{unit} in total fits {relaxed} replicas at "
            f"{(1 - spec.scale_down_headroom) * target:g} each",
        )  # fmt: skip
    return _Recommendation(
        current, f"{rule}WithinTarget", f"{per_ready:.1f}{unit} per replica, target {target:g}"
    )


def _recommend_for_queue(
    observation: Observation, metrics: FleetMetrics, spec: ScalingSpec, history: History,
    now: float,
) -> _Recommendation | None:  # fmt: skip
    """A growing backlog means arrivals exceed what is served, whatever utilisation says yet."""
    queue = metrics.queue_tokens
    earlier = [
        (t, dict(totals)["QueueTokens"])
        for t, totals in history.totals
        if 0 < now - t <= spec.metric_window_seconds
    ]
    if not earlier or queue <= spec.queue_threshold_tokens:
        return None
    if (metrics.utilization_percent or 0.0) < spec.queue_saturation_percent:
        return None
    then, before = earlier[0]  # growth over the metric window, not one tick's burst
    if queue <= before or now <= then:
        return None
    last_time, last_queue = earlier[-1]
    start = observation.worker_start_seconds
    # Grown over the window but draining now: if the serving pods empty it before a new pod
    # could be ready, that pod would come for a backlog already gone.
    if (
        start is not None
        and queue < last_queue
        and (queue * (now - last_time) / (last_queue - queue) < start)
    ):
        return None
    growth = (queue - before) / (now - then)  # tokens/s arriving beyond what is served
    served = metrics.tokens_per_second
    current = observation.current_replicas
    # The pods that served scaled by arrivals over service. Pods still starting serve nothing
    # yet and keep the queue growing until they are ready: counted in `current`, never in the
    # ratio, or each tick of their start would add more (5 -> 14 in two minutes on the Azure
    # trace while 4 new pods were starting).
    serving = len(observation.reporting)
    wanted = math.ceil(serving * (served + growth) / served) if served > 0 else current + 1
    if wanted <= current:
        return None  # the pods already asked for cover it
    return _Recommendation(
        wanted, "QueueGrowing",
        f"queue grew to {queue:.0f} tokens (+{growth:.0f} tokens/s over {served:.0f} served)",
    )  # fmt: skip


def _lost(observation: Observation, history: History, now: float) -> list[str]:
    """Pods not ready now that were ready within LOST_POD_HOLD_SECONDS."""
    recent = {name for name, when in history.last_ready if now - when < LOST_POD_HOLD_SECONDS}
    return [name for name in observation.unready_pods if name in recent]


def _idle_bound(observation: Observation, spec: ScalingSpec) -> tuple[float, str]:
    """How long a fleet must be idle to go to zero, and which bound decided. Zero is the one
    scale-down a returning request pays a cold start for, so it waits at least as long as any
    other (the stabilisation window), and at least one measured start: zero and back costs a
    start of GPU time held without serving, plus that wait for the returning request. Idle
    as long as that costs before paying it, and zero costs at most twice the best choice made
    knowing when traffic returns (ski rental)."""
    bounds = [(spec.idle_timeout_seconds, "the idle timeout"),
              (spec.stabilization_seconds, "the stabilisation window")]  # fmt: skip
    if observation.worker_start_seconds is not None:
        bounds.append((observation.worker_start_seconds, "the measured worker start"))
    return max(bounds, key=lambda bound: bound[0])


def _is_idle(observation: Observation, spec: ScalingSpec, history: History, now: float) -> bool:
    """No request for the idle bound, with minReplicas 0: the only way to zero. Above zero
    the targets' scale-down, with its stabilisation window, takes an idle fleet down, so a
    gap in traffic a little longer than the timeout does not meet a single pod on return."""
    if spec.min_replicas > 0 or observation.missing or not observation.ready_pods:
        return False  # unknown load is never taken for no load
    if _lost(observation, history, now):
        return False
    if any(m.active for m in observation.reporting):
        return False
    since = history.last_activity if history.last_activity is not None else now
    return now - since >= _idle_bound(observation, spec)[0]


def _bounds(wish: int, spec: ScalingSpec) -> tuple[int, str]:
    """The wish clamped to [minReplicas, maxReplicas], and what the clamp did."""
    if wish > spec.max_replicas:
        return spec.max_replicas, f"; capped at maxReplicas {spec.max_replicas}"
    if wish < spec.min_replicas:
        return spec.min_replicas, f"; held at minReplicas {spec.min_replicas}"
    return wish, ""


def _scale_up_limit(current: int, spec: ScalingSpec, history: History, now: float) -> int:
    """HPA's default scale-up policy: the larger of +100% and +4 pods per period, measured
    from the smallest count this period started from."""
    recent = [before for when, before in history.scale_ups if now - when < spec.tick_seconds]
    base = min([current, *recent])
    return max(math.floor(base * (1 + spec.scale_up_percent / 100)), base + spec.scale_up_pods)


def _expected_ready(start: float) -> str:
    return f"new workers expected ready in about {start:.0f}s (the measured start)"


def from_zero(spec: ScalingSpec, worker_start_seconds: float | None) -> Decision:
    """Demand at the activator while no worker runs: at once to minReplicas, at least one."""
    wanted = max(1, spec.min_replicas)
    wait = "" if worker_start_seconds is None else f"; {_expected_ready(worker_start_seconds)}"
    message = f"a request reached the activator while no worker was running{wait}"
    return Decision(wanted, "ScaledFromZero", message, wanted)


def decide(observation: Observation, spec: ScalingSpec, history: History, now: float) -> Decision:
    current = observation.current_replicas
    metrics = fleet_metrics(observation)
    if _is_idle(observation, spec, history, now):
        bound, which = _idle_bound(observation, spec)
        start = observation.worker_start_seconds
        return Decision(
            spec.min_replicas, "Idle",
            f"no requests for {bound:g}s ({which}; idle timeout {spec.idle_timeout_seconds:g}s, "
            f"stabilisation window {spec.stabilization_seconds:g}s, measured worker start "
            f"{'unknown' if start is None else f'{start:g}s'}); going to minReplicas",
            spec.min_replicas, limited=True, metrics=metrics,
        )  # fmt: skip
    candidates = [
        _recommend_for_target(rule, total, target, unit, observation, spec)
        for rule, total, target, unit in _target_recommendations(
            observation, spec, _windowed_totals(observation, spec, history, now)
        )
    ]
    queue = _recommend_for_queue(observation, metrics, spec, history, now)
    if queue is not None:
        candidates.append(queue)
    if not candidates:
        candidates.append(_Recommendation(current, "NoTargets", "no autoscaling target set"))
    best = max(candidates, key=lambda r: r.replicas)  # the largest recommendation wins
    if not observation.reporting and best.replicas <= current:
        best = _Recommendation(current, "MetricsMissing", "no ready worker reported metrics")
    elif observation.missing and best.replicas <= current:
        names = ", ".join(observation.missing)
        best = _Recommendation(current, "MetricsMissing", f"no fresh metrics from {names}; holding")
    elif (lost := _lost(observation, history, now)) and best.replicas < current:
        # A pod that was serving and is not ready now (frozen, restarting after a crash) may
        # hold load no metric shows: clients stuck on a frozen pod leave the others idle. Like
        # an unmeasured pod, it is not taken for an idle one.
        best = _Recommendation(
            current, "ReplicasNotReady",
            f"{', '.join(lost)} not ready since serving, load unknown; holding "
            f"(wanted {best.replicas}: {best.reason})",
        )  # fmt: skip
    recommendation, clamp_note = _bounds(best.replicas, spec)
    replicas, reason, message = recommendation, best.reason, best.message + clamp_note
    if recommendation > current:
        limit = _scale_up_limit(current, spec, history, now)
        if recommendation > limit:
            replicas, reason = limit, "ScaleUpRateLimited"
            message = f"{message}; wants {recommendation}, rate-limited to {limit} this period"
        if observation.worker_start_seconds is not None:
            message += f"; {_expected_ready(observation.worker_start_seconds)}"
    elif recommendation < current:
        window = [
            r for when, r in history.recommendations if now - when < spec.stabilization_seconds
        ]
        stable = min(max([recommendation, *window]), current)
        since = now - history.started if history.started is not None else 0.0
        if since < spec.stabilization_seconds:
            # A history younger than the window (a new service, an operator restart) has not
            # seen the load a window holds: keep what runs, as if it had been asked for.
            replicas, reason = current, "StartupHold"
            message = (
                f"{message}; holding {current}: this history is {since:.0f}s old, under the "
                f"{spec.stabilization_seconds:g}s window"
            )
        elif stable > recommendation:
            replicas, reason = stable, "ScaleDownStabilized"
            message = (
                f"{message}; holding {stable}, the highest recommendation in the last "
                f"{spec.stabilization_seconds:g}s"
            )
        else:
            replicas = stable
    at_bound = spec.min_replicas != spec.max_replicas and replicas in (
        spec.min_replicas,
        spec.max_replicas,
    )
    return Decision(replicas, reason, message, recommendation, limited=at_bound, metrics=metrics)


def remember(
    history: History, observation: Observation, decision: Decision, spec: ScalingSpec, now: float
) -> History:
    """The history after this tick: recommendations in the window, this period's scale-ups,
    the last time anything was asked of the fleet and the fleet totals of the metric window."""
    window = max(spec.stabilization_seconds, spec.tick_seconds)
    kept = [(when, r) for when, r in history.recommendations if now - when < window]
    recommendations = (*kept, (now, decision.recommendation))
    scale_ups = tuple((w, r) for w, r in history.scale_ups if now - w < spec.tick_seconds)
    if decision.replicas > observation.current_replicas:
        scale_ups += ((now, observation.current_replicas),)
    # Unmeasured pods and pods that stopped serving count as activity: idle starts once all
    # are seen idle.
    active = (
        any(m.active for m in observation.reporting)
        or bool(observation.missing)
        or bool(_lost(observation, history, now))
    )
    seen = {p.name: now for p in observation.ready_pods}
    last_ready = (
        *((n, w) for n, w in history.last_ready
          if n not in seen and now - w < LOST_POD_HOLD_SECONDS),
        *seen.items(),
    )  # fmt: skip
    last_activity = now if active or history.last_activity is None else history.last_activity
    return History(
        recommendations=recommendations,
        scale_ups=scale_ups,
        last_activity=last_activity,
        started=history.started if history.started is not None else now,
        last_ready=last_ready,
        totals=(
            *((when, t) for when, t in history.totals if now - when < spec.metric_window_seconds),
            *(((now, tuple(_fleet_totals(observation).items())),) if observation.reporting else ()),
        ),
    )
