"""What one reconcile pass must do, decided without I/O: which of the workers' objects to
send (only those whose live copy differs, so a resync of an unchanged service makes no API
call) and whether to write the replica count. The reconciler (reconciler.py) observes, calls
these, and applies the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedfleet_operator.prefetch import (
    build_prefetch_job,
    job_name,
    prefetch_state,
    wanted_prefetch,
)
from embedfleet_operator.resources import (
    REPLICAS_MANAGER,
    build_activator,
    build_activator_account,
    build_deployment,
    build_kubernetes_service,
    build_pdb,
    build_workers_service,
    replicas_to_set,
    scales_to_zero,
)
from embedfleet_operator.spec import EmbeddingService

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Live:
    """The live copies of the workers' objects (None: absent), from the watch-fed cache."""

    deployment: Manifest | None = None
    kubernetes_service: Manifest | None = None
    pdb: Manifest | None = None
    workers_service: Manifest | None = None  # scale-to-zero only: where the activator forwards
    activator: Manifest | None = None  # scale-to-zero only: the activator's Deployment
    activator_account: Manifest | None = None  # scale-to-zero only: its ServiceAccount
    # The service's prefetch Jobs (any model or revision) and their pods.
    prefetch_jobs: tuple[Manifest, ...] = ()
    prefetch_pods: tuple[Manifest, ...] = ()

    def prefetch_job(self, name: str) -> Manifest | None:
        return next((j for j in self.prefetch_jobs if j["metadata"]["name"] == name), None)


@dataclass(frozen=True)
class ObjectsPlan:
    apply: tuple[Manifest, ...]  # order: Deployment, Services, PDB, activator's account, activator
    delete: tuple[tuple[str, str], ...]  # (kind, name) of objects the spec no longer wants


def contains(live: Any, wanted: Any) -> bool:
    """Whether `live` already holds every field `wanted` sets, with the same value. The
    apiserver adds defaults (a probe's successThreshold, a container's terminationMessagePath),
    so extra fields in `live` do not count; lists must match item by item."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and contains(live[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(contains(a, b) for a, b in zip(live, wanted, strict=True))
        )
    return bool(live == wanted) or str(live) == str(wanted)


def _differs(wanted: Manifest, live: Manifest | None) -> bool:
    if live is None:
        return True
    meta, live_meta = wanted["metadata"], live.get("metadata") or {}
    # `spec`, or a ServiceAccount's top-level automountServiceAccountToken.
    body = {k: v for k, v in wanted.items() if k not in ("apiVersion", "kind", "metadata")}
    return not (
        contains(live_meta.get("labels") or {}, meta.get("labels") or {})
        and contains(live_meta.get("ownerReferences") or [], meta.get("ownerReferences") or [])
        and contains(live, body)
    )


def cluster_ip_of(kubernetes_service: Manifest | None) -> str | None:
    ip = ((kubernetes_service or {}).get("spec") or {}).get("clusterIP")
    return str(ip) if ip and ip != "None" else None


def _ready_replicas(deployment: Manifest | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def route_to_activator(service: EmbeddingService, live: Live) -> bool:
    """Whether the Kubernetes Service must point at the activator: a scale-to-zero fleet with
    no ready worker (or none asked for), and an activator that is ready to hold requests."""
    if not scales_to_zero(service.spec) or _ready_replicas(live.activator) < 1:
        return False
    asked = int(((live.deployment or {}).get("spec") or {}).get("replicas") or 0)
    return asked == 0 or _ready_replicas(live.deployment) == 0


def plan_objects(
    service: EmbeddingService,
    live: Live,
    *,
    worker_image: str,
    activator_image: str,
    full: bool,
) -> ObjectsPlan:
    """The objects to (re)apply. `full` (a new generation, or the first pass since start):
    all of them, so fields the spec no longer sets are dropped; otherwise only those missing
    or drifted from the spec (a hand edit), so a resync of an unchanged service costs no
    API call. The Kubernetes Service follows route_to_activator."""
    wanted_pdb = build_pdb(service)
    to_activator = route_to_activator(service, live)
    jobs, delete, held = _prefetch(service, live, worker_image=worker_image)
    wanted = (
        [] if held else [(build_deployment(service, worker_image=worker_image), live.deployment)]
    )
    wanted.append(
        (build_kubernetes_service(service, to_activator=to_activator), live.kubernetes_service)
    )
    if wanted_pdb is not None:
        wanted.append((wanted_pdb, live.pdb))
    # What the spec no longer wants goes, as the cache (complete before the first pass) shows.
    if wanted_pdb is None and live.pdb is not None:
        delete.append(("PodDisruptionBudget", service.name))
    if scales_to_zero(service.spec):
        wanted.append((build_workers_service(service), live.workers_service))
        # Before its Deployment: a pod naming a missing ServiceAccount is refused at creation.
        wanted.append((build_activator_account(service), live.activator_account))
        cluster_ip = cluster_ip_of(live.workers_service)
        if cluster_ip:  # known once the workers' Service exists: the next pass adds it
            address = f"{cluster_ip}:{service.spec.service.port}"
            activator = build_activator(service, image=activator_image, workers_address=address)
            wanted.append((activator, live.activator))
    elif live.activator is not None and cluster_ip_of(live.workers_service):
        # No longer scaling to zero: the activator sleeps at zero replicas (the operator may
        # not delete Deployments; it goes with its EmbeddingService, or wakes if minReplicas
        # returns to 0), and the workers' Service, harmless, stays.
        address = f"{cluster_ip_of(live.workers_service)}:{service.spec.service.port}"
        asleep = build_activator(
            service, image=activator_image, workers_address=address, replicas=0
        )
        wanted.append((asleep, live.activator))
    return ObjectsPlan(
        apply=jobs
        + tuple(manifest for manifest, copy in wanted if full or _differs(manifest, copy)),
        delete=tuple(delete),
    )


def _prefetch(
    service: EmbeddingService, live: Live, *, worker_image: str
) -> tuple[tuple[Manifest, ...], list[tuple[str, str]], bool]:
    """The prefetch Job to create (a Job's template cannot change: it is sent only while
    absent), the stale Jobs to delete, and whether the worker Deployment is held back: not
    created, or not moved to the new model or revision, until the Job has succeeded."""
    if not wanted_prefetch(service):
        return (), [("Job", j["metadata"]["name"]) for j in live.prefetch_jobs], False
    name = job_name(service)
    job = live.prefetch_job(name)
    state = prefetch_state(service, job, live.prefetch_pods)
    create = () if job is not None else (build_prefetch_job(service, worker_image=worker_image),)
    stale = [] if state.holds_workers else [
        ("Job", j["metadata"]["name"]) for j in live.prefetch_jobs if j["metadata"]["name"] != name
    ]  # fmt: skip
    return create, stale, state.holds_workers


def plan_replicas(service: EmbeddingService, deployment: Manifest | None) -> int | None:
    """The replica count to write now, or None. Until our replicas manager has written once,
    the Deployment's count is the API default (1), not a choice to keep."""
    if deployment is None:
        return None  # not created yet (or not in the cache yet): its event brings us back
    current = (deployment.get("spec") or {}).get("replicas")
    managers = {m.get("manager") for m in deployment["metadata"].get("managedFields") or []}
    if REPLICAS_MANAGER not in managers:
        current = None
    return replicas_to_set(service.spec, current)


def unready_pod_names(pods: Sequence[Manifest], ready: set[str]) -> tuple[str, ...]:
    """Pods that are neither among the ready targets nor terminating."""
    return tuple(
        p["metadata"]["name"]
        for p in pods
        if p["metadata"]["name"] not in ready and not p["metadata"].get("deletionTimestamp")
    )
