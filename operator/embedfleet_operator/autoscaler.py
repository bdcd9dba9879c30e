"""One autoscaling tick per EmbeddingService (I/O coordination only): observe the ready
workers, let the pure policy decide, write replicas through the scale subresource when the
decision differs, and hand the status fields back. The policy's history lives here, per
service, in memory; after an operator restart it starts empty, which the policy treats
conservatively (no rates on the first scrape, the current count seeds the window)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from embedfleet_operator.kube import Kube
from embedfleet_operator.observer import Observer, ready_targets
from embedfleet_operator.operator_metrics import OperatorMetrics
from embedfleet_operator.policy import Decision, History, Observation, ScalingSpec, decide, remember
from embedfleet_operator.resources import SELECTOR_LABEL

Manifest = dict[str, Any]


@dataclass
class _ServiceState:
    observer: Observer
    history: History = field(default_factory=History)


@dataclass(frozen=True)
class TickResult:
    decision: Decision | None  # None: autoscaling is off or there is no Deployment yet
    enabled: bool
    previous_replicas: int | None
    scaled: bool


class Autoscaler:
    def __init__(
        self,
        kube: Kube,
        http: httpx.AsyncClient,
        metrics: OperatorMetrics,
        *,
        tick_seconds: float,
        scrape_timeout_seconds: float,
    ) -> None:
        self._kube, self._http, self._metrics = kube, http, metrics
        self._tick = tick_seconds
        self._scrape_timeout = scrape_timeout_seconds
        self._services: dict[str, _ServiceState] = {}

    def forget(self, service: Manifest) -> None:
        meta = service["metadata"]
        self._services.pop(meta["uid"], None)
        self._metrics.forget(meta["namespace"], meta["name"])

    async def tick(self, service: Manifest) -> TickResult:
        started = time.monotonic()
        try:
            return await self._tick_once(service, started)
        finally:
            self._metrics.tick_duration.observe(time.monotonic() - started)

    async def _tick_once(self, service: Manifest, now: float) -> TickResult:
        meta, spec = service["metadata"], service["spec"]
        namespace, name = meta["namespace"], meta["name"]
        enabled = bool((spec.get("autoscaling") or {}).get("enabled", True))
        deployment = await self._kube.read_deployment(namespace, name)
        if not enabled or deployment is None:
            self._services.pop(meta["uid"], None)
            return TickResult(None, enabled, None, scaled=False)
        current = int(deployment.get("spec", {}).get("replicas") or 0)
        state = self._services.get(meta["uid"])
        if state is None:
            # A fresh history: the policy holds the current count until the history spans its
            # stabilisation window, so a restarted operator never scales down on a first look
            # (policy.decide, StartupHold; the simulator starts the same way).
            state = _ServiceState(Observer(self._http, self._scrape_timeout), History())
            self._services[meta["uid"]] = state
        slices = await self._kube.list_endpoint_slices(namespace, name)
        pods = await self._kube.list_pods(namespace, f"{SELECTOR_LABEL}={name}")
        targets = ready_targets(slices, pods)
        scrape = await state.observer.scrape(targets, now)
        labels = (namespace, name)
        self._metrics.scrapes.labels(*labels).inc(len(targets))
        if scrape.failures:
            self._metrics.scrape_failures.labels(*labels).inc(len(scrape.failures))
        ready = {t.name for t in targets}
        unready = tuple(
            p["metadata"]["name"] for p in pods
            if p["metadata"]["name"] not in ready and not p["metadata"].get("deletionTimestamp")
        )  # fmt: skip
        observation = Observation(
            current_replicas=current, ready_pods=scrape.pods, unready_pods=unready
        )
        scaling = ScalingSpec.from_resource(spec, tick_seconds=self._tick)
        decision = decide(observation, scaling, state.history, now)
        state.history = remember(state.history, observation, decision, scaling, now)
        self._metrics.decisions.labels(*labels, decision.reason).inc()
        self._metrics.desired.labels(*labels).set(decision.replicas)
        self._metrics.min_replicas.labels(*labels).set(scaling.min_replicas)
        self._metrics.max_replicas.labels(*labels).set(scaling.max_replicas)
        if decision.metrics is not None:
            self._metrics.requests.labels(*labels).set(decision.metrics.requests_per_second)
            if decision.metrics.utilization_percent is not None:
                self._metrics.utilization.labels(*labels).set(decision.metrics.utilization_percent)
        scaled = decision.replicas != current
        if scaled:
            await self._kube.scale(namespace, name, decision.replicas)
            direction = "up" if decision.replicas > current else "down"
            self._metrics.scale_events.labels(*labels, direction).inc()
        return TickResult(decision, enabled, current, scaled)
