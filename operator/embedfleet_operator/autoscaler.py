"""One autoscaling tick per EmbeddingService (I/O coordination only): the ready workers from the
watch-fed cache, their /metrics scraped, the pure policy's decision, replicas written through
the scale subresource when the decision differs, and the autoscaler's own part of status and
its Events. The policy's history lives here, per service, in memory; after an operator restart
it starts empty, which the policy treats conservatively (StartupHold)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from embedfleet_operator.cache import ClusterCache
from embedfleet_operator.events import Event, EventSink, utc_now
from embedfleet_operator.fleet import Observation
from embedfleet_operator.kube import KubeWrites
from embedfleet_operator.observer import Scraper, ready_targets
from embedfleet_operator.operator_metrics import OperatorMetrics
from embedfleet_operator.policy import (
    Decision,
    History,
    ScalingSpec,
    decide,
    from_zero,
    remember,
)
from embedfleet_operator.reconcile_plan import Live, route_to_activator, unready_pod_names
from embedfleet_operator.resources import (
    build_kubernetes_service,
    scales_to_zero,
    workers_service_name,
)
from embedfleet_operator.spec import EmbeddingService
from embedfleet_operator.starts import StartHistory, record_starts
from embedfleet_operator.status import (
    Condition,
    autoscaling_status,
    is_written,
    schedule_condition,
)

log = logging.getLogger("embedfleet.operator")
AUTOSCALER_MANAGER = "embedfleet-autoscaler"  # the autoscaler's part of status


@dataclass
class _ServiceState:
    scraper: Scraper
    history: History = field(default_factory=History)
    starts: StartHistory = field(default_factory=StartHistory)


@dataclass(frozen=True)
class TickResult:
    decision: Decision | None  # None: autoscaling is off or there is no Deployment yet
    previous_replicas: int | None
    scaled: bool
    worker_start_seconds: float | None = None  # the measured start the decision used


class Autoscaler:
    def __init__(
        self,
        kube: KubeWrites,
        cache: ClusterCache,
        http: httpx.AsyncClient,
        metrics: OperatorMetrics,
        events: EventSink,
        *,
        tick_seconds: float,
        scrape_timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] = utc_now,
    ) -> None:
        self._kube, self._cache, self._http = kube, cache, http
        self._metrics, self._events = metrics, events
        self._tick = tick_seconds
        self._scrape_timeout = scrape_timeout_seconds
        self._clock, self._wall_clock = clock, wall_clock
        self._services: dict[str, _ServiceState] = {}

    def forget(self, uid: str, namespace: str, name: str) -> None:
        self._services.pop(uid, None)
        self._metrics.forget(namespace, name)

    def expected_start(self, service: EmbeddingService) -> float | None:
        """The service's measured worker start (None before one was seen), for the activator's
        Retry-After (demand.py)."""
        state = self._services.get(service.uid)
        return None if state is None else state.starts.estimate

    async def tick(
        self, service: EmbeddingService, *, late: float = 0.0, skipped: int = 0
    ) -> TickResult:
        """One tick; `late` and `skipped` say how this tick kept its schedule (ticks.py)."""
        started = self._clock()
        self._metrics.tick_lateness.observe(late)
        if skipped:
            self._metrics.ticks_skipped.labels(service.namespace, service.name).inc(skipped)
        try:
            result = await self._decide_and_scale(service, started)
        finally:
            self._metrics.tick_duration.observe(self._clock() - started)
        schedule = schedule_condition(late, skipped, self._tick)
        await self._write_status(service, result, schedule)
        return result

    async def _decide_and_scale(self, service: EmbeddingService, now: float) -> TickResult:
        namespace, name = service.namespace, service.name
        deployment = self._cache.deployment(namespace, name)
        if not service.spec.autoscaling.enabled or deployment is None:
            self._services.pop(service.uid, None)
            return TickResult(None, None, scaled=False)
        current = int((deployment.get("spec") or {}).get("replicas") or 0)
        state = self._services.get(service.uid)
        if state is None:
            # A fresh history: the policy holds the current count until the history spans its
            # stabilisation window, so a restarted operator never scales down on a first look.
            state = _ServiceState(Scraper(self._http, self._scrape_timeout))
            self._services[service.uid] = state
        pods = self._cache.pods(namespace, name)
        labels = (namespace, name)
        self._measure_starts(state, pods, labels)
        # A scale-to-zero service's own Service may point at its activator: the workers'
        # Service always lists the workers.
        listed = workers_service_name(name) if scales_to_zero(service.spec) else name
        targets = ready_targets(self._cache.endpoint_slices(namespace, listed), pods)
        scrape = await state.scraper.scrape(targets, now)
        self._metrics.scrapes.labels(*labels).inc(len(targets))
        if scrape.failures:
            self._metrics.scrape_failures.labels(*labels).inc(len(scrape.failures))
        observation = Observation(
            current_replicas=current,
            ready_pods=scrape.pods,
            unready_pods=unready_pod_names(pods, {t.name for t in targets}),
            worker_start_seconds=state.starts.estimate,
        )
        scaling = ScalingSpec.from_spec(service.spec, tick_seconds=self._tick)
        decision = decide(observation, scaling, state.history, now)
        state.history = remember(state.history, observation, decision, scaling, now)
        self._record(labels, decision, scaling)
        scaled = decision.replicas != current
        if scaled:
            if decision.replicas == 0:
                await self._route_to_activator(service)
            await self._kube.scale(namespace, name, decision.replicas)
            direction = "up" if decision.replicas > current else "down"
            self._metrics.scale_events.labels(*labels, direction).inc()
        return TickResult(decision, current, scaled, state.starts.estimate)

    def _measure_starts(
        self, state: _ServiceState, pods: list[dict[str, Any]], labels: tuple[str, str]
    ) -> None:
        """Each pod's start, once, the first time it is seen ready (from the pods the watch
        already brought: no API call)."""
        state.starts, measured = record_starts(state.starts, pods)
        for seconds in measured:
            self._metrics.worker_starts.labels(*labels).observe(seconds)
        if state.starts.estimate is not None:
            self._metrics.expected_start.labels(*labels).set(state.starts.estimate)

    async def _route_to_activator(self, service: EmbeddingService) -> None:
        """Before the last worker goes: the Kubernetes Service points at the activator, so no
        request meets an empty Service in between (the reconciler keeps it so)."""
        live = Live(deployment={"spec": {"replicas": 0}},
                    activator=self._cache.activator(service.namespace, service.name))  # fmt: skip
        if route_to_activator(service, live):
            await self._kube.apply(build_kubernetes_service(service, to_activator=True))

    async def activate(self, service: EmbeddingService) -> bool:
        """Demand at the activator while the fleet is at zero: scale up now, not at the next
        tick. Whether it scaled (False: workers were already asked for)."""
        deployment = self._cache.deployment(service.namespace, service.name)
        if deployment is None or int((deployment.get("spec") or {}).get("replicas") or 0) > 0:
            return False
        now = self._clock()
        state = self._services.get(service.uid)
        start = None if state is None else state.starts.estimate
        scaling = ScalingSpec.from_spec(service.spec, tick_seconds=self._tick)
        decision = from_zero(scaling, start)
        await self._kube.scale(service.namespace, service.name, decision.replicas)
        if state is not None:  # the window now holds this scale-up, and the fleet is active
            state.history = remember(state.history, Observation(0, ()), decision, scaling, now)
            state.history = dataclasses.replace(state.history, last_activity=now)
        self._metrics.scale_events.labels(service.namespace, service.name, "up").inc()
        kept = next((c for c in service.status.get("conditions") or []
                     if c.get("type") == "ScalingOnSchedule"), None)  # fmt: skip
        schedule = (
            Condition(kept["type"], kept["status"], kept.get("reason", ""), kept.get("message", ""))
            if kept else None
        )  # fmt: skip
        await self._write_status(service, TickResult(decision, 0, True, start), schedule)
        return True

    def _record(self, labels: tuple[str, str], decision: Decision, scaling: ScalingSpec) -> None:
        self._metrics.decisions.labels(*labels, decision.reason).inc()
        self._metrics.desired.labels(*labels).set(decision.replicas)
        self._metrics.min_replicas.labels(*labels).set(scaling.min_replicas)
        self._metrics.max_replicas.labels(*labels).set(scaling.max_replicas)
        if decision.metrics is not None:
            self._metrics.requests.labels(*labels).set(decision.metrics.requests_per_second)
            if decision.metrics.utilization_percent is not None:
                self._metrics.utilization.labels(*labels).set(decision.metrics.utilization_percent)

    async def _write_status(
        self, service: EmbeddingService, result: TickResult, schedule: Condition | None
    ) -> None:
        decision = result.decision
        wanted = autoscaling_status(
            service, decision, enabled=service.spec.autoscaling.enabled, scaled=result.scaled,
            now=self._wall_clock(), schedule=schedule,
            worker_start_seconds=result.worker_start_seconds,
        )  # fmt: skip
        if not is_written(service.status, wanted):
            await self._kube.apply_status(
                service.namespace, service.name, wanted, manager=AUTOSCALER_MANAGER
            )
        if not result.scaled or decision is None:
            return
        before = result.previous_replicas or 0
        direction = "ScaledUp" if decision.replicas > before else "ScaledDown"
        if decision.reason == "ScaledFromZero":
            direction = "ScaledFromZero"
        message = f"{before} -> {decision.replicas} replicas: {decision.reason}: {decision.message}"
        self._events.post(service, Event("Normal", direction, message))
        log.info("scaled %s/%s %s", service.namespace, service.name, message)
