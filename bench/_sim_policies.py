"""The autoscalers bench/autoscale_sim.py compares: embedfleet's real policy and three baselines
written from their public specifications. Each gets the same fleet, target (65% utilisation),
minReplicas and maxReplicas; each decides every `period` seconds and returns the replica count
the fleet must have; the simulator creates or removes pods to match at once."""

from __future__ import annotations

import dataclasses
import math
import statistics

from bench._sim_cluster import Cluster, SimConfig
from embedfleet_operator.fleet import Observation, PodMetrics, PodObservation
from embedfleet_operator.policy import History, ScalingSpec, decide, from_zero, remember
from embedfleet_operator.spec import EmbeddingServiceSpec, ModelSpec
from embedfleet_operator.starts import RECENT_STARTS


class Autoscaler:
    name = "?"
    period = 15  # seconds between decisions
    per_second = False  # whether `observe` must be called every simulated second
    wakes_from_zero = False  # whether `activate` must be called every second at zero

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.last_reason = ""

    def start(self, now: int, cluster: Cluster) -> None:
        """Called once before the first second (the initial fleet is ready and idle)."""

    def observe(self, now: int, cluster: Cluster) -> None:
        """Called after every simulated second when `per_second` is set."""

    def decide(self, now: int, cluster: Cluster) -> int:
        raise NotImplementedError

    def activate(self, now: int, cluster: Cluster) -> int | None:
        """Called every second while the fleet is at zero when `wakes_from_zero` is set."""
        return None

    def _clamp(self, replicas: int) -> int:
        return max(self.config.min_replicas, min(self.config.max_replicas, replicas))


class Embedfleet(Autoscaler):
    """`embedfleet_operator.policy.decide` and `remember`, unchanged, fed what the operator's
    observer would see: every tick each ready pod's rates over the last tick from counter
    deltas (requests/s, tokens/s, engine busy fraction, NVML utilisation taken equal to it)
    and its queue gauges at the sampling instant. A pod first scraped this tick has no rate
    yet (`PodObservation(name, None)`): the observer needs two scrapes. The scrape is taken
    `scrape_lag` seconds before the decision (the operator scrapes every worker, then
    decides; 1 s is generous at a 15 s tick), while the replica count is read at the decision,
    as the operator reads the Deployment. The measured worker start is the operator's estimate
    (starts.py): the median of the last 5 simulated pods' starts, none before the first."""

    name = "embedfleet"

    def __init__(self, config: SimConfig, tick: int = 15, scrape_lag: int = 1) -> None:
        super().__init__(config)
        self.period = tick
        if not 0 <= scrape_lag < tick:
            raise ValueError("the scrape lag must be under one tick")
        self.scrape_lag = scrape_lag
        self.per_second = scrape_lag > 0  # observe() takes the scrape `scrape_lag` s early
        self.scrape: tuple[PodObservation, ...] = ()
        # The CRD's defaults (spec.py) for everything the simulation does not vary.
        defaults = ScalingSpec.from_spec(
            EmbeddingServiceSpec(model=ModelSpec(name="simulated")), tick_seconds=float(tick)
        )
        self.spec = dataclasses.replace(
            defaults,
            min_replicas=config.min_replicas,
            max_replicas=config.max_replicas,
            target_utilization_percent=config.target_percent,
        )
        self.history = History()
        self.scraped: dict[int, float] = {}  # pod -> served tokens at the last scrape

    def _scrape(self, cluster: Cluster) -> tuple[PodObservation, ...]:
        capacity, size, window = cluster.capacity, self.config.request_tokens, float(self.period)
        scraped: dict[int, float] = {}
        pods: list[PodObservation] = []
        for i, pod in enumerate(cluster.ids):
            served = scraped[pod] = cluster.served(i)
            before = self.scraped.get(pod)
            if before is None:
                pods.append(PodObservation(f"worker-{pod}", None))
                continue
            tokens = (served - before) / window
            busy = min(1.0, tokens / capacity)
            queue = cluster.queue[i]
            metrics = PodMetrics(
                requests_per_second=tokens / size,
                tokens_per_second=tokens,
                engine_utilization=busy,
                gpu_utilization=busy,
                queue_tokens=queue,
                queue_requests=float(math.ceil(queue / size)),
            )
            pods.append(PodObservation(f"worker-{pod}", metrics))
        self.scraped = scraped
        return tuple(pods)

    def start(self, now: int, cluster: Cluster) -> None:
        self._scrape(cluster)

    def observe(self, now: int, cluster: Cluster) -> None:
        if (now + self.scrape_lag) % self.period == 0:
            self.scrape = self._scrape(cluster)

    @staticmethod
    def measured_start(cluster: Cluster) -> float | None:
        recent = cluster.starts[-RECENT_STARTS:]
        return statistics.median(recent) if recent else None

    def decide(self, now: int, cluster: Cluster) -> int:
        pods = self.scrape if self.scrape_lag else self._scrape(cluster)
        observation = Observation(
            current_replicas=cluster.pod_count,
            ready_pods=pods,
            worker_start_seconds=self.measured_start(cluster),
        )
        decision = decide(observation, self.spec, self.history, float(now))
        self.history = remember(self.history, observation, decision, self.spec, float(now))
        self.last_reason = decision.reason
        return decision.replicas


class EmbedfleetZero(Embedfleet):
    """embedfleet with `minReplicas: 0` and its activator: an idle fleet goes to zero, and a
    request arriving at zero waits at the activator (the cluster's pending buffer) while the
    operator, told at once through the activator's /demand, scales to one a second later
    (demand.py); the pod then takes its start delay like any other."""

    name = "embedfleet-zero"
    wakes_from_zero = True
    demand_delay = 1  # seconds from a request waiting to the scale-up (the long poll, the API)

    def __init__(self, config: SimConfig, tick: int = 15, scrape_lag: int = 1) -> None:
        super().__init__(config, tick, scrape_lag)
        self.spec = dataclasses.replace(self.spec, min_replicas=0)
        self.waiting_since: int | None = None

    def activate(self, now: int, cluster: Cluster) -> int | None:
        """Called every second while the fleet is at zero: the replicas to scale to, if any."""
        if cluster.pending_tokens <= 0.0:
            self.waiting_since = None
            return None
        if self.waiting_since is None:
            self.waiting_since = now
        if now - self.waiting_since < self.demand_delay:
            return None
        self.waiting_since = None
        # As Autoscaler.activate: the window holds this scale-up, and the fleet is active.
        decision = from_zero(self.spec, self.measured_start(cluster))
        observation = Observation(current_replicas=0, ready_pods=())
        self.history = remember(self.history, observation, decision, self.spec, float(now))
        self.history = dataclasses.replace(self.history, last_activity=float(now))
        self.last_reason = decision.reason
        return decision.replicas


class Hpa(Autoscaler):
    """Kubernetes HPA (autoscaling/v2) with default behaviour, on a Pods metric: the GPU
    utilisation from DCGM-exporter through Prometheus and the Prometheus Adapter, target average
    65. Sources: kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/ ("Algorithm
    details", "Default behavior") and pkg/controller/podautoscaler (replica_calculator.go,
    horizontal.go). Modelled as:

    - sync every 15 s; the metric a pod shows is its utilisation averaged over 60 s (the
      adapter's rate window) ending 30 s ago (one scrape interval of lag): a pod has one once
      it has been ready for the whole window, and is "missing" before;
    - pods not ready, or ready for under 30 s, are unready: set aside, counted at 0% when the
      others say scale up, ignored otherwise; missing pods count at 100% of the target on a
      scale-down and 0% on a scale-up; if that flips the direction or lands in the tolerance
      (0.1), nothing moves; no pod with a metric at all: nothing moves;
    - behaviour: scale-up stabilisation 0 s, at most max(+100%, +4 pods) per 15 s; scale-down
      stabilisation 300 s (the highest recommendation in the window), up to 100% per 15 s."""

    name = "hpa"
    tolerance = 0.1
    readiness_delay = 30  # delayOfInitialReadinessStatus

    def __init__(self, config: SimConfig, lag: int = 30, window: int = 60) -> None:
        super().__init__(config)
        self.lag, self.window = lag, window
        self.snapshots: dict[int, dict[int, float]] = {}  # sync time -> pod -> served tokens
        self.recommendations: list[tuple[int, int]] = []  # (time, desired)
        self.changes: list[tuple[int, int]] = []  # (time, replicas added; negative: removed)

    def start(self, now: int, cluster: Cluster) -> None:
        self.snapshots[now] = {pod: cluster.served(i) for i, pod in enumerate(cluster.ids)}

    def usage(self, now: int, cluster: Cluster) -> tuple[list[float], int, int]:
        """(utilisation percent of pods with a metric, unready pods, missing pods)."""
        self.start(now, cluster)
        end = self.snapshots.get(now - self.lag, {})
        begin = self.snapshots.get(now - self.lag - self.window, {})
        for old in [t for t in self.snapshots if t < now - self.lag - self.window]:
            del self.snapshots[old]
        metrics: list[float] = []
        unready, missing = len(cluster.starting), 0
        scale = 100.0 / (self.window * cluster.capacity)
        for i, pod in enumerate(cluster.ids):
            if now - cluster.ready_at[i] < self.readiness_delay:
                unready += 1
            elif pod in begin and pod in end:
                metrics.append((end[pod] - begin[pod]) * scale)
            else:
                missing += 1
        return metrics, unready, missing

    def desired(self, metrics: list[float], unready: int, missing: int, current: int) -> int:
        """replica_calculator.go, calcPlainMetricReplicas with an AverageValue target."""
        target, tolerance = self.config.target_percent, self.tolerance
        ratio = sum(metrics) / len(metrics) / target
        up_with_unready = unready > 0 and ratio > 1.0
        if not up_with_unready and missing == 0:
            if abs(1.0 - ratio) <= tolerance:
                return current
            return math.ceil(ratio * len(metrics))
        values = list(metrics)
        values += [target if ratio < 1.0 else 0.0] * missing
        if up_with_unready:
            values += [0.0] * unready
        new_ratio = sum(values) / len(values) / target
        if abs(1.0 - new_ratio) <= tolerance or (ratio - 1.0) * (new_ratio - 1.0) < 0:
            return current
        replicas = math.ceil(new_ratio * len(values))
        if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
            return current
        return replicas

    def behave(self, now: int, current: int, desired: int) -> int:
        """horizontal.go: stabilizeRecommendationWithBehaviors, then the rate policies."""
        up_window, down_window = 0, 300
        up = down = desired
        for when, recommended in self.recommendations:
            if when > now - up_window:
                up = min(up, recommended)
            if when > now - down_window:
                down = max(down, recommended)
        replicas = min(max(current, up), down)
        self.recommendations = [r for r in self.recommendations if r[0] > now - down_window]
        self.recommendations.append((now, desired))
        period = 15
        recent = [change for when, change in self.changes if when > now - period]
        start = current - sum(c for c in recent if c > 0) - sum(c for c in recent if c < 0)
        if replicas > current:
            limit = max(math.ceil(start * 2.0), start + 4, current)
            replicas = min(replicas, limit)
        elif replicas < current:
            limit = min(math.floor(start * (1 - 1.0)), current)
            replicas = max(replicas, limit)
        replicas = self._clamp(replicas)
        self.changes = [c for c in self.changes if c[0] > now - period]
        if replicas != current:
            self.changes.append((now, replicas - current))
        return replicas

    def decide(self, now: int, cluster: Cluster) -> int:
        current = cluster.pod_count
        metrics, unready, missing = self.usage(now, cluster)
        if not metrics:
            self.last_reason = "NoMetrics"
            return current
        wanted = self.desired(metrics, unready, missing, current)
        replicas = self.behave(now, current, wanted)
        self.last_reason = "Up" if replicas > current else "Down"
        return replicas


class Knative(Autoscaler):
    """Knative Serving's KPA, defaults except the target (knative.dev/docs/serving/autoscaling/
    and pkg/autoscaler/scaling/autoscaler.go): decisions every 2 s on the fleet's concurrency
    (requests in flight, queued ones included, as the queue-proxy counts them) averaged over a
    60 s stable window and a 6 s panic window (10%). The target is the concurrency of one
    replica serving 65% of its capacity with no queue: 0.65 x capacity / request size x service
    time (Little's law), so on a queue-free fleet it sizes exactly as a 65% utilisation target.
    desired = ceil(window average / target), kept within [floor(ready / 2), 1000 x ready] (max
    scale-down rate 2, max scale-up rate 1000); panic starts when the panic window asks for at
    least 2x the ready pods (panic threshold 200%), takes the larger of the two windows, never
    scales down, and ends once the panic window has stayed below the threshold for a stable
    window. minScale 1 (no scale to zero), no scale-down delay, no activator burst capacity."""

    name = "knative"
    period = 2
    per_second = True
    stable_window = 60
    panic_window = 6
    panic_threshold = 2.0
    max_scale_up_rate = 1000.0
    max_scale_down_rate = 2.0

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        # In flight, in tokens: queued + served in the last second x service time.
        self.target = config.target_percent / 100 * config.capacity * config.service_seconds
        self.samples = [0.0] * self.stable_window  # per-second concurrency, a ring
        self.seen = 0
        self.panic_since: int | None = None
        self.max_panic_pods = 0

    def observe(self, now: int, cluster: Cluster) -> None:
        in_flight = cluster.backlog + cluster.pending_tokens + cluster.last_served * cluster.service
        self.samples[now % self.stable_window] = in_flight
        self.seen += 1

    def averages(self, now: int) -> tuple[float, float]:
        stable_n = min(self.seen, self.stable_window)
        panic_n = min(self.seen, self.panic_window)
        if stable_n == 0:
            return 0.0, 0.0
        ring = self.samples
        panic = sum(ring[(now - k) % self.stable_window] for k in range(panic_n))
        return sum(ring) / stable_n, panic / panic_n

    def decide(self, now: int, cluster: Cluster) -> int:
        stable, panic = self.averages(now)
        ready = max(1.0, float(cluster.ready))
        max_up = math.ceil(self.max_scale_up_rate * ready)
        max_down = math.floor(ready / self.max_scale_down_rate)
        stable_pods = math.ceil(stable / self.target - 1e-9)
        panic_pods = math.ceil(panic / self.target - 1e-9)
        desired_stable = min(max(stable_pods, max_down), max_up)
        desired_panic = min(max(panic_pods, max_down), max_up)
        over = panic_pods / ready >= self.panic_threshold
        if over:
            self.panic_since = now
        elif self.panic_since is not None and self.panic_since + self.stable_window < now:
            self.panic_since, self.max_panic_pods = None, 0
        desired = desired_stable
        self.last_reason = "Stable"
        if self.panic_since is not None:
            self.last_reason = "Panic"
            desired = max(desired, desired_panic)
            if desired > self.max_panic_pods:
                self.max_panic_pods = desired
            else:
                desired = self.max_panic_pods
        return self._clamp(desired)


class Fixed(Autoscaler):
    """No autoscaling: a fleet sized for the trace's peak one-minute rate at the same 65%
    utilisation target, ceil(peak / (0.65 x capacity)) replicas, all ready from the start."""

    name = "fixed"
    period = 3600

    def __init__(self, config: SimConfig, replicas: int) -> None:
        super().__init__(config)
        self.replicas = replicas
        self.last_reason = "Fixed"

    def decide(self, now: int, cluster: Cluster) -> int:
        return self.replicas


class Oracle(Autoscaler):
    """Not an autoscaler: a bound. At the start of every minute it knows that minute's mean
    load and has exactly the replicas it needs at the target, ready at once (the simulator
    gives it pods with no start delay). What it spends and misses is what a fleet sized
    minute by minute cannot avoid: the bursts inside a minute."""

    name = "oracle"
    period = 60

    def __init__(self, config: SimConfig, arrivals: list[float]) -> None:
        super().__init__(config)
        self.arrivals = arrivals
        self.last_reason = "Foresight"

    def decide(self, now: int, cluster: Cluster) -> int:
        coming = self.arrivals[now : now + 60]
        if not coming:
            return cluster.pod_count
        return self._clamp(self.config.replicas_for(sum(coming) / len(coming)))


POLICY_NAMES = ("embedfleet", "embedfleet-zero", "hpa", "knative", "fixed", "oracle")
