"""The reconciler apart from kopf and the cluster: the watch-fed cache and the API's writes are
fakes (tests/unit/operator_fakes.py), everything between them is the product's code. Each case
is one or more passes and what they wrote."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import httpx
import pytest

from embedfleet_operator.api_outage import ApiOutage, Retrying
from embedfleet_operator.reconciler import STATUS_MANAGER, Reconciler
from tests.unit.operator_fakes import Events, FakeCache, FakeKube, api_error, body

Manifest = dict[str, Any]


class World:
    def __init__(self, fail: Any = None) -> None:
        self.cache = FakeCache()
        self.kube = FakeKube(cache=self.cache)
        if fail is not None:
            self.kube.fail = fail
        self.events = Events()
        self.now = 1000.0
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self._no_network))
        self.reconciler = Reconciler(
            self.kube, self.cache, self.http, self.events,
            worker_image="registry.local/worker:1", activator_image="registry.local/operator:1",
            probe_timeout_seconds=1.0,
            clock=lambda: self.now, wall_clock=lambda: f"t{self.now:.0f}",
        )  # fmt: skip

    @staticmethod
    def _no_network(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no pods here", request=request)

    def run(self, resource: Manifest) -> None:
        asyncio.run(self.reconciler.reconcile(resource))

    def kinds_applied(self) -> list[str]:
        return [m["kind"] for m in self.kube.named("apply")]

    def status(self) -> Manifest:
        manager, status = self.kube.named("apply_status")[-1]
        assert manager == STATUS_MANAGER
        result: Manifest = status
        return result

    def reset(self) -> None:
        self.kube.calls.clear()


def conditions(status: Manifest) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_new_service_gets_its_objects_and_its_replicas_once() -> None:
    world = World()
    resource = body({"model": {"name": "m"}, "autoscaling": {"minReplicas": 2,
                     "maxReplicas": 4, "targetGPUUtilizationPercent": 65}})  # fmt: skip
    world.run(resource)
    assert world.kinds_applied() == ["Deployment", "Service", "PodDisruptionBudget"]
    assert world.kube.named("scale") == [("ml", "emb", 2)]  # the API's default 1 is no choice
    assert conditions(world.status())["Ready"] == ("False", "WorkersStarting")
    world.reset()
    world.run(resource)  # the Deployment's watch event brings the reconciler back
    assert world.kinds_applied() == []  # same generation, nothing drifted: no API call
    assert world.kube.named("scale") == []


def test_no_replica_count_is_written_before_the_deployment_is_seen() -> None:
    world = World()
    world.kube.cache = None  # the watch has not brought the new Deployment yet
    world.run(body())
    assert world.kinds_applied() == ["Deployment", "Service", "PodDisruptionBudget"]
    assert world.kube.named("scale") == []  # its event brings the reconciler back


def test_an_unchanged_service_costs_no_api_call_on_resync() -> None:
    world = World()
    resource = body()
    world.run(resource)
    world.run(resource)
    resource["status"] = world.status()
    world.reset()
    world.run(resource)
    assert world.kube.calls == []


def test_a_hand_edit_is_put_back_and_only_that_object_is_sent() -> None:
    world = World()
    resource = body()
    world.run(resource)
    live = world.cache.deployment("ml", "emb")
    assert live is not None
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:2"
    world.reset()
    world.run(resource)
    assert world.kinds_applied() == ["Deployment"]


def test_a_new_generation_is_applied_whole_and_a_pdb_no_longer_wanted_goes() -> None:
    world = World()
    world.run(body())
    assert world.cache.pdb("ml", "emb") is not None
    world.reset()
    one = {"model": {"name": "m"}, "autoscaling": {"maxReplicas": 1,
           "targetGPUUtilizationPercent": 65}}  # fmt: skip
    world.run(body(one, generation=2))
    assert world.kinds_applied() == ["Deployment", "Service"]
    assert world.kube.named("delete") == [("PodDisruptionBudget", "ml", "emb")]


def test_a_spec_the_apiserver_refuses_is_invalid_spec_and_is_not_sent_again() -> None:
    def refuse(call: str, arg: Any) -> Any:
        return api_error(422, "spec.template: bad") if call == "apply" else None

    world = World(refuse)
    world.run(body())
    status = world.status()
    assert conditions(status)["Degraded"] == ("True", "InvalidSpec")
    assert "spec.template: bad" in status["conditions"][-1]["message"]
    assert world.events.reasons == ["InvalidSpec", "InvalidSpec"]  # Ready and Degraded
    world.kube.fail = lambda call, arg: None
    world.reset()
    world.run(body())  # the same generation: not sent again (refusals.py)
    assert world.kinds_applied() == []
    world.run(body(generation=2))  # a new spec is
    assert world.kinds_applied() == ["Deployment", "Service", "PodDisruptionBudget"]


def test_a_body_the_spec_models_cannot_read_is_reported_not_applied() -> None:
    world = World()
    world.run(body({"model": {"name": "m"}, "engine": {"maxBatchTokens": "lots"}}))
    assert world.kinds_applied() == []
    assert conditions(world.status())["Degraded"] == ("True", "InvalidSpec")
    message = world.status()["conditions"][-1]["message"]
    assert message == "spec.engine.maxBatchTokens: expected an integer, got str 'lots'"


def test_a_status_already_written_is_not_written_again() -> None:
    world = World()
    resource = body()
    world.run(resource)
    resource["status"] = world.status()
    world.reset()
    world.run(resource)
    assert world.kube.named("apply_status") == []


def test_readiness_flipping_is_an_event() -> None:
    world = World()
    resource = body()
    world.run(resource)
    world.run(resource)
    resource["status"] = world.status()
    deployment = world.cache.deployment("ml", "emb")
    assert deployment is not None
    deployment["status"] = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                            "observedGeneration": 1}  # fmt: skip
    deployment["metadata"]["generation"] = 1
    world.events.posted.clear()
    world.run(resource)
    assert conditions(world.status())["Ready"] == ("True", "WorkersReady")
    assert world.events.reasons == ["WorkersReady"]


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_a_moments_refusal_is_retried_each_second_until_it_passes(status: int) -> None:
    refusals = [api_error(status)] * 2

    def flaky(call: str, arg: Any) -> Any:
        return refusals.pop() if call == "apply" and refusals else None

    world = World(flaky)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        world.now += seconds

    retrying = Retrying(ApiOutage(), sleep=sleep, clock=lambda: world.now)

    async def attempt() -> None:
        await world.reconciler.reconcile(body())

    asyncio.run(retrying(attempt, "reconcile"))
    assert slept == [1.0, 1.0]
    assert world.kinds_applied() == ["Deployment", "Service", "PodDisruptionBudget"]


def test_a_deleted_service_is_left_to_the_garbage_collector() -> None:
    world = World()
    resource = copy.deepcopy(body())
    resource["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    world.run(resource)
    assert world.kube.calls == []


SCALE_TO_ZERO = {"model": {"name": "m"}, "autoscaling": {"minReplicas": 0, "maxReplicas": 3,
                 "targetGPUUtilizationPercent": 65}}  # fmt: skip


def _ready(world: World, kind: str, name: str, replicas: int) -> None:
    live = world.cache.objects[(kind, "ml", name)]
    live["spec"]["replicas"] = live["spec"].get("replicas", replicas)
    live["status"] = {"replicas": replicas, "readyReplicas": replicas,
                      "updatedReplicas": replicas, "observedGeneration": 1}  # fmt: skip


def test_a_scale_to_zero_service_gets_the_workers_service_then_its_activator() -> None:
    world = World()
    resource = body(SCALE_TO_ZERO)
    world.run(resource)
    applied = {(m["kind"], m["metadata"]["name"]) for m in world.kube.named("apply")}
    assert ("Service", "emb-workers") in applied  # where the activator forwards
    assert ("Deployment", "emb-activator") not in applied  # its address is not known yet
    world.reset()
    world.run(resource)  # the workers' Service now has its ClusterIP: the activator follows
    [activator] = [m for m in world.kube.named("apply") if m["kind"] == "Deployment"]
    assert activator["metadata"]["name"] == "emb-activator"
    pod = activator["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False  # no Kubernetes API access at all
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["EMBEDFLEET_ACTIVATOR_WORKERS"] == "10.96.0.10:8000"
    assert env["EMBEDFLEET_ACTIVATOR_HOLD_SECONDS"] == "1800"
    labels = activator["spec"]["template"]["metadata"]["labels"]
    assert "embedfleet.dev/service" not in labels  # never selected as a worker


def test_the_activators_account_comes_before_its_deployment_and_is_kept() -> None:
    world = World()
    resource = body(SCALE_TO_ZERO)
    world.run(resource)
    world.run(resource)
    order = [(m["kind"], m["metadata"]["name"]) for m in world.kube.named("apply")]
    account, deployment = ("ServiceAccount", "emb-activator"), ("Deployment", "emb-activator")
    assert order.index(account) < order.index(deployment)  # a pod needs its account to exist
    world.reset()
    world.run(resource)  # unchanged: no write at all
    assert world.kinds_applied() == []
    del world.cache.objects[("ServiceAccount", "ml", "emb-activator")]  # deleted by hand
    world.run(resource)
    assert [(m["kind"], m["metadata"]["name"]) for m in world.kube.named("apply")] == [account]
    world.reset()
    live = world.cache.objects[("ServiceAccount", "ml", "emb-activator")]
    live["automountServiceAccountToken"] = True  # a hand edit that would mount tokens
    world.run(resource)
    [repaired] = world.kube.named("apply")
    assert repaired["automountServiceAccountToken"] is False


def test_the_service_points_at_the_activator_only_while_no_worker_is_ready() -> None:
    world = World()
    resource = body(SCALE_TO_ZERO)
    world.run(resource)
    world.run(resource)
    _ready(world, "Deployment", "emb-activator", 1)
    world.cache.objects[("Deployment", "ml", "emb")]["spec"]["replicas"] = 0
    world.reset()
    world.run(resource)
    [service] = [m for m in world.kube.named("apply") if m["kind"] == "Service"]
    assert service["spec"]["selector"] == {"embedfleet.dev/activator": "emb"}
    world.cache.objects[("Deployment", "ml", "emb")]["spec"]["replicas"] = 1
    _ready(world, "Deployment", "emb", 1)
    world.reset()
    world.run(resource)
    [service] = [m for m in world.kube.named("apply") if m["kind"] == "Service"]
    assert service["spec"]["selector"] == {"embedfleet.dev/service": "emb"}


def test_a_service_that_no_longer_scales_to_zero_puts_its_activator_to_sleep() -> None:
    world = World()
    world.run(body(SCALE_TO_ZERO))
    world.run(body(SCALE_TO_ZERO))
    world.reset()
    world.run(body(generation=2))
    assert world.kube.named("delete") == []  # the operator may not delete Deployments
    [asleep] = [m for m in world.kube.named("apply") if m["metadata"]["name"] == "emb-activator"]
    assert asleep["spec"]["replicas"] == 0
    applied = world.kube.named("apply")
    service = next(m for m in applied if m["kind"] == "Service" and m["metadata"]["name"] == "emb")
    assert service["spec"]["selector"] == {"embedfleet.dev/service": "emb"}
