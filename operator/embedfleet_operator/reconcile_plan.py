"""What one reconcile pass must do, decided without I/O: which of the workers' objects to
send (only those whose live copy differs, so a resync of an unchanged service makes no API
call) and whether to write the replica count. The reconciler (reconciler.py) observes, calls
these, and applies the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedfleet_operator.resources import (
    REPLICAS_MANAGER,
    build_deployment,
    build_kubernetes_service,
    build_pdb,
    replicas_to_set,
)
from embedfleet_operator.spec import EmbeddingService

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Live:
    """The live copies of the workers' objects (None: absent), from the watch-fed cache."""

    deployment: Manifest | None = None
    kubernetes_service: Manifest | None = None
    pdb: Manifest | None = None


@dataclass(frozen=True)
class ObjectsPlan:
    apply: tuple[Manifest, ...]  # in this order: Deployment, Service, PodDisruptionBudget
    delete_pdb: bool


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
    return not (
        contains(live_meta.get("labels") or {}, meta.get("labels") or {})
        and contains(live_meta.get("ownerReferences") or [], meta.get("ownerReferences") or [])
        and contains(live.get("spec") or {}, wanted["spec"])
    )


def plan_objects(
    service: EmbeddingService, live: Live, *, worker_image: str, full: bool
) -> ObjectsPlan:
    """The objects to (re)apply. `full` (a new generation, or the first pass since start):
    all of them, so fields the spec no longer sets are dropped; otherwise only those missing
    or drifted from the spec (a hand edit), so a resync of an unchanged service costs no
    API call."""
    wanted_pdb = build_pdb(service)
    wanted = [
        (build_deployment(service, worker_image=worker_image), live.deployment),
        (build_kubernetes_service(service), live.kubernetes_service),
    ]
    if wanted_pdb is not None:
        wanted.append((wanted_pdb, live.pdb))
    return ObjectsPlan(
        apply=tuple(manifest for manifest, copy in wanted if full or _differs(manifest, copy)),
        delete_pdb=wanted_pdb is None and (full or live.pdb is not None),
    )


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
