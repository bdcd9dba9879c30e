"""One reconcile pass on an EmbeddingService, apart from kopf: observe (the watch-fed cache),
plan (the pure reconcile_plan, resources and status), apply (kube.py). handlers.py only calls
`reconcile` with the resource's body; deletion relies on owner references and the garbage
collector."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from kubernetes_asyncio.client.exceptions import ApiException

from embedfleet_operator.cache import ClusterCache
from embedfleet_operator.events import EventSink, announcements, utc_now
from embedfleet_operator.kube import KubeWrites
from embedfleet_operator.observer import load_failures
from embedfleet_operator.prefetch import (
    hold_problem,
    job_name,
    prefetch_state,
    prefetch_status,
    wanted_prefetch,
)
from embedfleet_operator.reconcile_plan import Live, plan_objects, plan_replicas
from embedfleet_operator.refusals import Refusal, refusal_message, refused, should_apply
from embedfleet_operator.spec import EmbeddingService, SpecError, parse_service
from embedfleet_operator.status import Problem, compute_status, invalid_status, is_written

log = logging.getLogger("embedfleet.operator")
Manifest = dict[str, Any]
STATUS_MANAGER = "embedfleet-status"  # the reconciler's part of status


def observe_live(cache: ClusterCache, namespace: str, name: str) -> Live:
    return Live(
        deployment=cache.deployment(namespace, name),
        kubernetes_service=cache.kubernetes_service(namespace, name),
        pdb=cache.pdb(namespace, name),
        workers_service=cache.workers_service(namespace, name),
        activator=cache.activator(namespace, name),
        activator_account=cache.activator_account(namespace, name),
        prefetch_jobs=tuple(cache.prefetch_jobs(namespace, name)),
        prefetch_pods=tuple(cache.prefetch_pods(namespace, name)),
    )


class Reconciler:
    def __init__(
        self,
        kube: KubeWrites,
        cache: ClusterCache,
        http: httpx.AsyncClient,
        events: EventSink,
        *,
        worker_image: str,
        activator_image: str,
        probe_timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] = utc_now,
    ) -> None:
        self._kube, self._cache, self._http, self._events = kube, cache, http, events
        self._worker_image, self._activator_image = worker_image, activator_image
        self._probe_timeout = probe_timeout_seconds
        self._clock, self._wall_clock = clock, wall_clock
        self._refusals: dict[str, Refusal] = {}  # by uid: the last refusal of its objects
        # By uid: the generation whose objects were last applied in full. A new generation is
        # applied whole, so a field removed from the spec is removed from the objects too
        # (server-side apply drops what the manager no longer sets); an unchanged one only
        # where the live copy drifted.
        self._applied: dict[str, int] = {}

    def forget(self, uid: str) -> None:
        self._refusals.pop(uid, None)
        self._applied.pop(uid, None)

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return  # being deleted: the garbage collector removes what it owned
        try:
            service = parse_service(body)
        except SpecError as error:
            await self._report_invalid(body, str(error))
            return
        namespace, name = service.namespace, service.name
        problem = await self._apply_objects(service)
        deployment = self._cache.deployment(namespace, name)
        if problem is None:
            replicas = plan_replicas(service, deployment)
            if replicas is not None:
                await self._kube.scale(namespace, name, replicas)
        pods = self._cache.pods(namespace, name)
        # Workers that run but stay unready may say why on /health (a model that cannot load).
        load_errors = await load_failures(self._http, pods, self._probe_timeout)
        held, prefetch = self._prefetch(service)
        status = compute_status(
            service, deployment, pods,
            apply_error=problem, now=self._wall_clock(), load_errors=load_errors,
            held=held, prefetch=prefetch,
        )  # fmt: skip
        await self._write_status(service, status)

    def _prefetch(self, service: EmbeddingService) -> tuple[Problem | None, Manifest | None]:
        """Why workers wait for the prefetch Job, and status.prefetch (None: no prefetch)."""
        if not wanted_prefetch(service):
            return None, None
        namespace, name = service.namespace, service.name
        job = next((j for j in self._cache.prefetch_jobs(namespace, name)
                    if j["metadata"]["name"] == job_name(service)), None)  # fmt: skip
        state = prefetch_state(service, job, self._cache.prefetch_pods(namespace, name))
        return hold_problem(state), prefetch_status(service, state)

    async def _write_status(self, service: EmbeddingService, status: Manifest) -> None:
        if is_written(service.status, status):
            return
        await self._kube.apply_status(
            service.namespace, service.name, status, manager=STATUS_MANAGER
        )
        for event in announcements(service.status, status):
            self._events.post(service, event)

    async def _report_invalid(self, body: Mapping[str, Any], message: str) -> None:
        """A body these models cannot read: Degraded=True with the message, as for a spec the
        apiserver refused (InvalidSpec), and nothing applied."""
        meta = body["metadata"]
        namespace, name = meta.get("namespace") or "default", meta["name"]
        log.warning("%s/%s: %s", namespace, name, message)
        current = dict(body.get("status") or {})
        status = invalid_status(
            current, int(meta.get("generation") or 0), Problem("InvalidSpec", message),
            now=self._wall_clock(),
        )  # fmt: skip
        if not is_written(current, status):
            await self._kube.apply_status(namespace, name, status, manager=STATUS_MANAGER)

    async def _apply_objects(self, service: EmbeddingService) -> Problem | None:
        """Applies the workers' objects unless this generation was refused for good (see
        refusals.py); the refusal, if any, for status."""
        uid, generation, now = service.uid, service.generation, self._clock()
        refusal = self._refusals.get(uid)
        if not should_apply(refusal, generation=generation, now=now):
            assert refusal is not None
            return refusal.problem  # the same spec would be refused again: wait for a new one
        namespace, name = service.namespace, service.name
        live = observe_live(self._cache, namespace, name)
        full = self._applied.get(uid) != generation
        plan = plan_objects(service, live, worker_image=self._worker_image,
                            activator_image=self._activator_image, full=full)  # fmt: skip
        try:
            for manifest in plan.apply:
                await self._kube.apply(manifest)
            for kind, object_name in plan.delete:
                await self._kube.delete(kind, namespace, object_name)
        except ApiException as error:
            return self._refused(service, error)
        self._refusals.pop(uid, None)
        self._applied[uid] = generation
        return None

    def _refused(self, service: EmbeddingService, error: ApiException) -> Problem:
        uid, generation, now = service.uid, service.generation, self._clock()
        status = int(error.status or 0)
        message = refusal_message(status, error.reason, error.body)
        refusal = refused(
            self._refusals.get(uid), generation=generation, status=status, message=message,
            now=now,
        )  # fmt: skip
        if refusal is None:
            self._refusals.pop(uid, None)
        else:
            self._refusals[uid] = refusal
        if refusal is None or not refusal.permanent:
            raise error  # a moment's refusal: retried every second like an outage (Retrying)
        log.warning("%s/%s generation %d: %s; not retried before the spec changes (or %gs)",
                    service.namespace, service.name, generation, message,
                    refusal.retry_at - now)  # fmt: skip
        return refusal.problem
