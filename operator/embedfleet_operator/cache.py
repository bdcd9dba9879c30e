"""Watch-fed caches of the objects the operator reads on every pass: the workers' Deployments,
Kubernetes Services, PodDisruptionBudgets, pods, EndpointSlices and the activators'
ServiceAccounts, kept by kopf indexes (one watch stream per kind, the informer pattern,
each filtered to our label) instead of four API calls per service per tick.
Each entry is keyed by (namespace, EmbeddingService name).

At 200 services the per-tick reads were most of the operator's CPU and a tick took 3.2 s
(issue 16); reading a dict here costs microseconds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import kopf

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from embedfleet_operator.prefetch import PREFETCH_LABEL
from embedfleet_operator.resources import (
    ACTIVATOR_LABEL,
    MANAGED_BY_LABELS,
    SELECTOR_LABEL,
    activator_name,
    workers_service_name,
)

Manifest = dict[str, Any]
Key = tuple[str, str]  # (namespace, EmbeddingService name)

# The index names are the kwargs kopf passes them as.
DEPLOYMENTS, SERVICES, PDBS = "embedfleet_deployments", "embedfleet_services", "embedfleet_pdbs"
PODS, SLICES = "embedfleet_pods", "embedfleet_slices"
ACTIVATOR_PODS = "embedfleet_activator_pods"
ACCOUNTS = "embedfleet_service_accounts"  # the activators' (resources.build_activator_account)
EMBEDDING_SERVICES = "embedfleet_embedding_services"  # the resources themselves, by name
# Prefetch Jobs and their pods, keyed by the prefetch label (prefetch.py), not the selector.
PREFETCH_JOBS, PREFETCH_PODS = "embedfleet_prefetch_jobs", "embedfleet_prefetch_pods"


class ClusterCache(Protocol):
    """What the reconciler and the autoscaler read of the cluster."""

    def deployment(self, namespace: str, name: str) -> Manifest | None: ...

    def kubernetes_service(self, namespace: str, name: str) -> Manifest | None: ...

    def pdb(self, namespace: str, name: str) -> Manifest | None: ...

    def pods(self, namespace: str, name: str) -> list[Manifest]: ...

    def endpoint_slices(self, namespace: str, name: str) -> list[Manifest]: ...

    def workers_service(self, namespace: str, name: str) -> Manifest | None: ...

    def activator(self, namespace: str, name: str) -> Manifest | None: ...

    def activator_pods(self, namespace: str, name: str) -> list[Manifest]: ...

    def activator_account(self, namespace: str, name: str) -> Manifest | None: ...

    def prefetch_jobs(self, namespace: str, name: str) -> list[Manifest]: ...

    def prefetch_pods(self, namespace: str, name: str) -> list[Manifest]: ...


class IndexCache:
    """ClusterCache over kopf's indexes (live mappings of key -> store of values)."""

    def __init__(self, indexes: Mapping[str, Mapping[Key, Any]]) -> None:
        self._indexes = indexes

    def _all(self, index: str, namespace: str, name: str) -> list[Manifest]:
        store = self._indexes[index].get((namespace, name))
        return sorted(store or (), key=lambda o: o["metadata"]["name"])

    def _one(
        self, index: str, namespace: str, name: str, object_name: str | None = None
    ) -> Manifest | None:
        # Owned objects are named after the service; another object with the label is not ours.
        wanted = object_name or name
        found = [o for o in self._all(index, namespace, name) if o["metadata"]["name"] == wanted]
        return found[0] if found else None

    def deployment(self, namespace: str, name: str) -> Manifest | None:
        return self._one(DEPLOYMENTS, namespace, name)

    def kubernetes_service(self, namespace: str, name: str) -> Manifest | None:
        return self._one(SERVICES, namespace, name)

    def pdb(self, namespace: str, name: str) -> Manifest | None:
        return self._one(PDBS, namespace, name)

    def pods(self, namespace: str, name: str) -> list[Manifest]:
        return self._all(PODS, namespace, name)

    def endpoint_slices(self, namespace: str, name: str) -> list[Manifest]:
        return self._all(SLICES, namespace, name)

    def workers_service(self, namespace: str, name: str) -> Manifest | None:
        return self._one(SERVICES, namespace, name, workers_service_name(name))

    def activator(self, namespace: str, name: str) -> Manifest | None:
        return self._one(DEPLOYMENTS, namespace, name, activator_name(name))

    def activator_pods(self, namespace: str, name: str) -> list[Manifest]:
        return self._all(ACTIVATOR_PODS, namespace, name)

    def activator_account(self, namespace: str, name: str) -> Manifest | None:
        return self._one(ACCOUNTS, namespace, name, activator_name(name))

    def prefetch_jobs(self, namespace: str, name: str) -> list[Manifest]:
        return self._all(PREFETCH_JOBS, namespace, name)

    def prefetch_pods(self, namespace: str, name: str) -> list[Manifest]:
        return self._all(PREFETCH_PODS, namespace, name)


def _by_service(body: kopf.Body) -> dict[Key, Manifest] | None:
    labels = body.metadata.labels
    service = labels.get(SELECTOR_LABEL)
    if not service or body.metadata.namespace is None:
        return None
    return {(body.metadata.namespace, service): dict(body)}


def _by_service_name(body: kopf.Body) -> dict[Key, Manifest] | None:
    service = body.metadata.labels.get("kubernetes.io/service-name")
    if not service or body.metadata.namespace is None:
        return None
    return {(body.metadata.namespace, service): dict(body)}


def register() -> None:
    """The kopf indexes behind IndexCache (called once, before kopf runs)."""

    def index_embedding_services(body: kopf.Body, **_: Any) -> dict[Key, Manifest] | None:
        if body.metadata.namespace is None or body.metadata.name is None:
            return None
        return {(body.metadata.namespace, body.metadata.name): dict(body)}

    kopf.index(GROUP, VERSION, PLURAL, id=EMBEDDING_SERVICES)(index_embedding_services)
    ours = dict(MANAGED_BY_LABELS)
    for index, group, version, plural in (
        (DEPLOYMENTS, "apps", "v1", "deployments"),
        (SERVICES, "", "v1", "services"),
        (PDBS, "policy", "v1", "poddisruptionbudgets"),
        (PODS, "", "v1", "pods"),
        (ACCOUNTS, "", "v1", "serviceaccounts"),
    ):

        def index_one(body: kopf.Body, **_: Any) -> dict[Key, Manifest] | None:
            return _by_service(body)

        kopf.index(group, version, plural, id=index, labels=ours)(index_one)

    def by_label(label: str) -> Callable[..., dict[Key, Manifest] | None]:
        """Indexes an object under the service its `label` names."""

        def index_one(body: kopf.Body, **_: Any) -> dict[Key, Manifest] | None:
            service = body.metadata.labels.get(label)
            if not service or body.metadata.namespace is None:
                return None
            return {(body.metadata.namespace, service): dict(body)}

        return index_one

    kopf.index("", "v1", "pods", id=ACTIVATOR_PODS, labels=ours)(by_label(ACTIVATOR_LABEL))
    kopf.index("batch", "v1", "jobs", id=PREFETCH_JOBS, labels=ours)(by_label(PREFETCH_LABEL))
    kopf.index("", "v1", "pods", id=PREFETCH_PODS, labels=ours)(by_label(PREFETCH_LABEL))

    # The EndpointSlice controller copies the Kubernetes Service's labels onto its slices.
    def index_slices(body: kopf.Body, **_: Any) -> dict[Key, Manifest] | None:
        return _by_service_name(body)

    kopf.index("discovery.k8s.io", "v1", "endpointslices", id=SLICES, labels=ours)(index_slices)
