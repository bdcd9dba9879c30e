"""The autoscaling tick apart from kopf and the cluster: workers are real worker metric
registries served over `httpx.MockTransport` (the network, not our code), the cache and the
API's writes are fakes. Covers the failure paths an end-to-end test rarely reaches: a scrape
that times out, a counter reset, a pod that vanishes mid-tick, a scale the API refuses."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import generate_latest

from embedfleet_operator.autoscaler import AUTOSCALER_MANAGER, Autoscaler
from embedfleet_operator.operator_metrics import OperatorMetrics
from embedfleet_operator.spec import parse_service
from embedfleet_worker.metrics import WorkerMetrics
from tests.unit.operator_fakes import Events, FakeCache, FakeKube, api_error, body, ready_pod

Manifest = dict[str, Any]
SPEC = {"model": {"name": "m"}, "autoscaling": {"minReplicas": 1, "maxReplicas": 8,
        "targetGPUUtilizationPercent": 50}}  # fmt: skip


class Fleet:
    """Two ready workers (ports 9001, 9002) behind one EmbeddingService."""

    def __init__(self, replicas: int = 2) -> None:
        self.workers = {port: WorkerMetrics() for port in (9001, 9002)}
        self.broken: dict[int, type[Exception]] = {}  # port -> what its scrape raises
        self.cache, self.events, self.now = FakeCache(), Events(), 0.0
        self.kube = FakeKube(cache=self.cache)
        self.cache.store(self._deployment(replicas))
        self.cache.pod_list[("ml", "emb")] = [
            ready_pod(f"emb-{port}", port=port) for port in self.workers
        ]
        self.metrics = OperatorMetrics()
        http = httpx.AsyncClient(transport=httpx.MockTransport(self._serve))
        self.autoscaler = Autoscaler(
            self.kube, self.cache, http, self.metrics, self.events,
            tick_seconds=15.0, scrape_timeout_seconds=1.0,
            clock=lambda: self.now, wall_clock=lambda: f"t{self.now:.0f}",
        )  # fmt: skip

    @staticmethod
    def _deployment(replicas: int) -> Manifest:
        meta = {"name": "emb", "namespace": "ml",
                "managedFields": [{"manager": "embedfleet-replicas"}]}  # fmt: skip
        spec = {"replicas": replicas, "template": {"spec": {"containers": []}}}
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}

    def _serve(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port or 0
        if port in self.broken:
            raise self.broken[port]("scrape failed", request=request)  # type: ignore[call-arg]
        if port not in self.workers:
            raise httpx.ConnectError("nothing listens there", request=request)
        return httpx.Response(200, content=generate_latest(self.workers[port].registry))

    def busy(self, port: int, seconds: float, requests: int = 10) -> None:
        worker = self.workers[port]
        worker.on_batch(num_inputs=requests, num_tokens=100 * requests, busy_seconds=seconds)
        worker.requests.labels(code="200").inc(requests)

    def tick(self, resource: Manifest | None = None, **schedule: Any) -> Any:
        self.now += 15.0
        service = parse_service(resource or body(SPEC))
        return asyncio.run(self.autoscaler.tick(service, **schedule))

    def status(self) -> Manifest:
        manager, status = self.kube.named("apply_status")[-1]
        assert manager == AUTOSCALER_MANAGER
        result: Manifest = status
        return result


def test_a_busy_fleet_scales_up_after_its_first_scrape_gives_rates() -> None:
    fleet = Fleet()
    first = fleet.tick()
    assert first.decision.reason == "MetricsMissing"  # one sample per pod: no rate yet
    assert not first.scaled
    for port in fleet.workers:
        fleet.busy(port, seconds=14.0)  # 93% busy over the 15 s tick
    second = fleet.tick()
    assert second.decision.reason == "UtilizationAboveTarget"
    assert fleet.kube.named("scale") == [("ml", "emb", 4)]
    assert fleet.status()["lastScaleReason"] == "UtilizationAboveTarget"
    assert fleet.events.reasons == ["ScaledUp"]


def test_a_scrape_that_times_out_counts_as_unmeasured_never_as_idle() -> None:
    fleet = Fleet()
    fleet.tick()
    fleet.broken[9002] = httpx.ReadTimeout
    result = fleet.tick()
    assert result.decision.reason == "MetricsMissing"
    assert result.decision.replicas == 2
    failures = fleet.metrics.scrape_failures.labels("ml", "emb")._value.get()
    assert failures == 1


def test_a_counter_reset_is_read_as_a_restart_not_as_negative_load() -> None:
    fleet = Fleet()
    for port in fleet.workers:
        fleet.busy(port, seconds=5.0, requests=1000)
    fleet.tick()
    fleet.workers[9001] = WorkerMetrics()  # the worker restarted: its counters start at 0
    fleet.busy(9001, seconds=14.0)
    fleet.busy(9002, seconds=14.0)
    result = fleet.tick()
    metrics = result.decision.metrics
    assert metrics.reporting_pods == 2
    assert metrics.requests_per_second == pytest.approx(20 / 15)


def test_a_pod_that_vanishes_mid_tick_holds_the_fleet_and_is_then_forgotten() -> None:
    fleet = Fleet()
    fleet.tick()
    fleet.tick()
    del fleet.workers[9002]  # gone between the cache's listing and the scrape
    result = fleet.tick()
    assert result.decision.reason == "MetricsMissing"
    assert not result.scaled
    fleet.cache.pod_list[("ml", "emb")] = [ready_pod("emb-9001", port=9001)]
    fleet.tick()  # the watch removed it: the scraper forgets its sample
    [state] = fleet.autoscaler._services.values()
    assert state.scraper._samples.keys() == {"uid-emb-9001"}


def test_a_scale_the_api_refuses_for_a_moment_raises_for_the_retry_wrapper() -> None:
    fleet = Fleet()
    fleet.tick()
    for port in fleet.workers:
        fleet.busy(port, seconds=14.0)
    fleet.kube.fail = lambda call, arg: api_error(409) if call == "scale" else None
    with pytest.raises(ApiException):
        fleet.tick()


def test_a_late_tick_is_counted_and_said_in_status() -> None:
    fleet = Fleet()
    fleet.tick(late=5.0, skipped=2)
    on_schedule = {c["type"]: c for c in fleet.status()["conditions"]}["ScalingOnSchedule"]
    assert (on_schedule["status"], on_schedule["reason"]) == ("False", "TicksLate")
    assert fleet.metrics.ticks_skipped.labels("ml", "emb")._value.get() == 2


def test_autoscaling_off_or_no_deployment_decides_nothing() -> None:
    fleet = Fleet()
    off = {**SPEC, "autoscaling": {"enabled": False}, "replicas": 3}
    assert fleet.tick(body(off)).decision is None
    assert fleet.status()["desiredReplicas"] == 3
    fleet.cache.objects.clear()
    assert fleet.tick().decision is None
    assert fleet.kube.named("scale") == []


ZERO = {"model": {"name": "m"}, "autoscaling": {"minReplicas": 0, "maxReplicas": 4,
        "targetGPUUtilizationPercent": 50}}  # fmt: skip


def test_demand_at_the_activator_scales_from_zero_at_once_and_once() -> None:
    fleet = Fleet(replicas=0)
    service = parse_service(body(ZERO))
    assert asyncio.run(fleet.autoscaler.activate(service)) is True
    assert fleet.kube.named("scale") == [("ml", "emb", 1)]
    assert fleet.events.reasons == ["ScaledFromZero"]
    assert fleet.status()["lastScaleReason"] == "ScaledFromZero"
    assert asyncio.run(fleet.autoscaler.activate(service)) is False  # already asked for


def test_the_service_points_at_a_ready_activator_before_the_last_worker_goes() -> None:
    fleet = Fleet(replicas=1)
    activator = {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "emb-activator", "namespace": "ml"},
                 "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}  # fmt: skip
    fleet.cache.objects[("Deployment", "ml", "emb-activator")] = activator
    fleet.cache.pod_list[("ml", "emb")] = [ready_pod("emb-9001", port=9001)]
    quiet = {**ZERO, "autoscaling": {**ZERO["autoscaling"], "idleTimeoutSeconds": 0,
                                     "scaleDownStabilizationSeconds": 0}}  # fmt: skip
    for _ in range(3):
        fleet.tick(body(quiet))
    calls = [(name, arg) for name, arg in fleet.kube.calls if name in ("apply", "scale")]
    assert calls[-1] == ("scale", ("ml", "emb", 0))
    name, service = calls[-2]
    assert name == "apply"
    assert service["spec"]["selector"] == {"embedfleet.dev/activator": "emb"}


def test_each_workers_start_is_measured_once_and_told_in_status_metrics_and_from_zero() -> None:
    fleet = Fleet()
    for index, pod in enumerate(fleet.cache.pod_list[("ml", "emb")]):  # ready after 60 s, 70 s
        pod["metadata"]["creationTimestamp"] = "2026-12-02T10:00:00Z"
        pod["status"]["conditions"][0]["lastTransitionTime"] = f"2026-12-02T10:01:{index}0Z"
    fleet.tick()
    fleet.tick()
    assert fleet.status()["workerStartSeconds"] == 65.0
    sample = fleet.metrics.registry.get_sample_value
    labels = {"namespace": "ml", "service": "emb"}
    assert sample("embedfleet_operator_worker_start_seconds_count", labels) == 2  # once each
    assert sample("embedfleet_operator_worker_start_seconds_sum", labels) == 130
    assert sample("embedfleet_operator_expected_worker_start_seconds", labels) == 65
    service = parse_service(body(SPEC))
    assert fleet.autoscaler.expected_start(service) == 65.0
    fleet.cache.objects[("Deployment", "ml", "emb")]["spec"]["replicas"] = 0
    assert asyncio.run(fleet.autoscaler.activate(service)) is True
    _, event = fleet.events.posted[-1]
    assert event.reason == "ScaledFromZero"
    assert "expected ready in about 65s" in event.message
    assert "expected ready in about 65s" in fleet.status()["lastScaleMessage"]
