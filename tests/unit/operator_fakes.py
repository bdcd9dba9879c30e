"""Fakes of the operator's I/O boundaries, for unit tests of the reconciler, the autoscaler tick
and the handlers' wiring without a cluster: `FakeKube` records writes (and fails them on
demand), `FakeCache` is the watch-fed cache as plain dicts, `Events` keeps what was posted. Our
own code paths run as they are; only the Kubernetes API and the network are stood in for."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from embedfleet_operator.events import Event
from embedfleet_operator.spec import EmbeddingService

Manifest = dict[str, Any]


def api_error(status: int, message: str = "") -> ApiException:
    error = ApiException(status=status, reason={409: "Conflict", 422: "Unprocessable Entity",
                                                404: "Not Found"}.get(status, "Error"))  # fmt: skip
    error.body = f'{{"kind": "Status", "message": "{message}"}}'
    return error


@dataclass
class FakeKube:
    """KubeWrites that records each call; `fail(call)` returns the error to raise, if any."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail: Callable[[str, Any], ApiException | None] = lambda call, arg: None
    cache: FakeCache | None = None  # writes land in it, as the watch would bring them

    def _record(self, call: str, arg: Any) -> None:
        error = self.fail(call, arg)
        if error is not None:
            raise error
        self.calls.append((call, arg))

    def named(self, call: str) -> list[Any]:
        return [arg for name, arg in self.calls if name == call]

    async def apply(self, manifest: Manifest) -> None:
        self._record("apply", manifest)
        if self.cache is not None:
            self.cache.store(manifest)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self._record("delete", (kind, namespace, name))
        if self.cache is not None:
            self.cache.objects.pop((kind, namespace, name), None)

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        self._record("scale", (namespace, name, replicas))
        if self.cache is not None:
            deployment = self.cache.objects.get(("Deployment", namespace, name))
            if deployment is not None:
                deployment["spec"]["replicas"] = replicas
                managers = deployment["metadata"].setdefault("managedFields", [])
                managers.append({"manager": "embedfleet-replicas"})

    async def apply_status(
        self, namespace: str, name: str, status: Manifest, *, manager: str
    ) -> None:
        self._record("apply_status", (manager, copy.deepcopy(status)))


@dataclass
class FakeCache:
    """The ClusterCache as dicts. `store` adds what an apiserver adds to an applied object
    (defaults the operator did not set), so drift checks see a realistic live copy."""

    objects: dict[tuple[str, str, str], Manifest] = field(default_factory=dict)
    pod_list: dict[tuple[str, str], list[Manifest]] = field(default_factory=dict)
    slices: dict[tuple[str, str], list[Manifest]] = field(default_factory=dict)
    activator_pod_list: dict[tuple[str, str], list[Manifest]] = field(default_factory=dict)
    prefetch_pod_list: dict[tuple[str, str], list[Manifest]] = field(default_factory=dict)

    def store(self, manifest: Manifest) -> None:
        live = copy.deepcopy(manifest)
        meta = live["metadata"]
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("managedFields", [{"manager": "embedfleet"}])
        if live["kind"] == "Deployment":
            live["spec"].setdefault("replicas", 1)
            live["spec"]["progressDeadlineSeconds"] = 600
            for container in live["spec"]["template"]["spec"]["containers"]:
                container["terminationMessagePath"] = "/dev/termination-log"
                container["readinessProbe"]["successThreshold"] = 1
            old = self.objects.get(("Deployment", meta["namespace"], meta["name"]))
            if old is not None:  # an apply without replicas keeps the count
                live["spec"]["replicas"] = old["spec"]["replicas"]
                meta["managedFields"] = old["metadata"]["managedFields"]
        if live["kind"] == "Service":
            live["spec"]["clusterIP"] = "10.96.0.10"
        self.objects[(live["kind"], meta["namespace"], meta["name"])] = live

    def deployment(self, namespace: str, name: str) -> Manifest | None:
        return self.objects.get(("Deployment", namespace, name))

    def kubernetes_service(self, namespace: str, name: str) -> Manifest | None:
        return self.objects.get(("Service", namespace, name))

    def pdb(self, namespace: str, name: str) -> Manifest | None:
        return self.objects.get(("PodDisruptionBudget", namespace, name))

    def pods(self, namespace: str, name: str) -> list[Manifest]:
        return self.pod_list.get((namespace, name), [])

    def endpoint_slices(self, namespace: str, name: str) -> list[Manifest]:
        return self.slices.get((namespace, name), [])

    def workers_service(self, namespace: str, name: str) -> Manifest | None:
        return self.objects.get(("Service", namespace, f"{name}-workers"))

    def activator(self, namespace: str, name: str) -> Manifest | None:
        return self.objects.get(("Deployment", namespace, f"{name}-activator"))

    def activator_pods(self, namespace: str, name: str) -> list[Manifest]:
        return self.activator_pod_list.get((namespace, name), [])

    def activator_account(self, namespace: str, name: str) -> Manifest | None:
        return self.objects.get(("ServiceAccount", namespace, f"{name}-activator"))

    def prefetch_jobs(self, namespace: str, name: str) -> list[Manifest]:
        return sorted(
            (job for (kind, ns, _), job in self.objects.items()
             if kind == "Job" and ns == namespace
             and job["metadata"]["labels"].get("embedfleet.dev/prefetch") == name),
            key=lambda job: str(job["metadata"]["name"]),
        )  # fmt: skip

    def prefetch_pods(self, namespace: str, name: str) -> list[Manifest]:
        return self.prefetch_pod_list.get((namespace, name), [])


@dataclass
class Events:
    posted: list[tuple[str, Event]] = field(default_factory=list)

    def post(self, service: EmbeddingService, event: Event) -> None:
        self.posted.append((service.name, event))

    @property
    def reasons(self) -> list[str]:
        return [event.reason for _, event in self.posted]


def body(spec: Manifest | None = None, *, generation: int = 1, status: Manifest | None = None,
         name: str = "emb", namespace: str = "ml") -> Manifest:  # fmt: skip
    """An EmbeddingService body as the apiserver stores it (the spec's defaults left out: the
    typed spec carries them)."""
    return {
        "apiVersion": "embedfleet.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": generation,
        },
        "spec": spec if spec is not None else {"model": {"name": "m"}},
        "status": status or {},
    }


def ready_pod(name: str, ip: str = "127.0.0.1", port: int = 8000, **extra: Any) -> Manifest:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", **extra},
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": port}]}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
