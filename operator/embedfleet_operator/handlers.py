"""kopf handlers: they only translate events into one reconcile pass or one autoscaling tick
(pure builders, policy and status decide; kube.py, observer.py do the I/O). Deletion relies on
owner references and the garbage collector."""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx
import kopf
import prometheus_client
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from embedfleet_operator.api_outage import RETRY_SECONDS, ApiOutage, KopfRetryFilter, is_transient
from embedfleet_operator.autoscaler import Autoscaler, TickResult
from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from embedfleet_operator.kube import REPLICAS_MANAGER, Kube
from embedfleet_operator.observer import load_failures
from embedfleet_operator.operator_metrics import OperatorMetrics
from embedfleet_operator.refusals import (
    Refusal,
    refusal_message,
    refused,
    should_apply,
)
from embedfleet_operator.resources import (
    build_deployment,
    build_pdb,
    build_service,
    replicas_to_set,
    selector_labels,
)
from embedfleet_operator.settings import OperatorSettings
from embedfleet_operator.status import (
    Problem,
    autoscaling_status,
    compute_status,
    status_changes,
)

log = logging.getLogger("embedfleet.operator")
_state: dict[str, Any] = {}
# Reconcile passes and autoscaling ticks of one service run one at a time, so neither writes
# status (conditions especially) from a copy the other has just made stale.
_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
_outage = ApiOutage()
_refusals: dict[str, Refusal] = {}  # by service uid: the last refusal of its workers' objects
# A handler retrying through an outage gives up after this long; its timer runs again at the
# next interval (kopf runs nothing else for that resource while a handler runs).
_RETRY_FOR_SECONDS = 60.0


def configure(settings: OperatorSettings) -> None:
    _state["settings"] = settings
    # Drift correction: hand-made changes no event of ours reports are put back each period.
    kopf.timer(GROUP, VERSION, PLURAL, interval=settings.resync_seconds, initial_delay=5.0)(resync)
    kopf.timer(
        GROUP, VERSION, PLURAL, id="autoscale",
        interval=settings.autoscale_seconds, initial_delay=settings.autoscale_seconds,
    )(autoscale)  # fmt: skip


def fold_kopf_retries() -> None:
    """After kopf configured logging: its per-request retry messages go into the outage's one
    WARNING. On the root logger's handlers, where every kopf logger's records arrive."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(KopfRetryFilter(_outage))


def _settings() -> OperatorSettings:
    settings: OperatorSettings = _state.get("settings") or OperatorSettings()
    return settings


def _kube() -> Kube:
    kube: Kube = _state["kube"]
    return kube


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    ours = _settings()
    settings.peering.name = ours.peering
    settings.peering.priority = ours.priority
    settings.peering.mandatory = True
    settings.persistence.finalizer = f"{GROUP}/operator"
    # Progress and diff-base in annotations: status belongs to the resource's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING
    # kopf's own requests (watch streams, peering keep-alives) retry every second through an
    # outage, for up to 10 minutes, instead of backing off to 13-21 s between attempts: the
    # watches resume within a second of the apiserver's return.
    settings.networking.error_backoffs = [RETRY_SECONDS] * 600
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config()
    kube = Kube(client.ApiClient())
    metrics = OperatorMetrics()
    if ours.metrics_address:
        host, _sep, port = ours.metrics_address.rpartition(":")
        server, _thread = prometheus_client.start_http_server(
            int(port), addr=host or "0.0.0.0", registry=metrics.registry
        )
        _state["metrics_server"] = server
    http = httpx.AsyncClient(follow_redirects=False)
    _state["http"] = http
    _state["autoscaler"] = Autoscaler(
        kube, http, metrics,
        tick_seconds=ours.autoscale_seconds,
        scrape_timeout_seconds=ours.scrape_timeout_seconds,
    )  # fmt: skip
    _state["kube"] = kube


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    kube = _state.pop("kube", None)
    _state.pop("autoscaler", None)
    http = _state.pop("http", None)
    if http is not None:
        await http.aclose()
    server = _state.pop("metrics_server", None)
    if server is not None:
        server.shutdown()
    if kube is not None:
        await kube.api.close()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile_on_change(body: kopf.Body, **_: Any) -> None:
    await reconcile(body.metadata["namespace"], body.metadata["name"], body.metadata.uid or "")


async def resync(body: kopf.Body, **_: Any) -> None:
    await reconcile(body.metadata["namespace"], body.metadata["name"], body.metadata.uid or "")


async def _retrying(attempt: Callable[[], Awaitable[None]], what: str) -> None:
    """Runs a handler's work, retrying it every RETRY_SECONDS while the API is unreachable (one
    WARNING per outage, an INFO when it ends) instead of raising into kopf's 60 s backoff and
    its traceback. Past _RETRY_FOR_SECONDS it gives up quietly: the next tick or resync picks
    the work up, still inside the same outage."""
    deadline = time.monotonic() + _RETRY_FOR_SECONDS
    while True:
        try:
            await attempt()
        except Exception as error:
            if not is_transient(error):
                raise
            _outage.failed(what, error, time.monotonic())
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(RETRY_SECONDS)
            continue
        _outage.succeeded(time.monotonic())
        return


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)  # optional: adds no finalizer
async def forget(body: kopf.Body, **_: Any) -> None:
    autoscaler: Autoscaler | None = _state.get("autoscaler")
    if autoscaler is not None:
        autoscaler.forget(dict(body))
    _locks.pop(body.metadata.uid or "", None)
    _refusals.pop(body.metadata.uid or "", None)


async def autoscale(body: kopf.Body, **_: Any) -> None:
    autoscaler: Autoscaler | None = _state.get("autoscaler")
    if autoscaler is None or body.metadata.get("deletionTimestamp"):
        return  # starting, stopping or being deleted
    namespace, name = body.metadata["namespace"], body.metadata["name"]

    async def tick() -> None:
        async with _locks[body.metadata.uid or name]:
            try:
                service = await _kube().read_service(namespace, name)
                if service is None:
                    return
                result = await autoscaler.tick(service)
                await _write_autoscaling_status(service, result)
            except ApiException as error:
                if error.status == 404:
                    return
                raise

    await _retrying(tick, "autoscaling")


async def _write_autoscaling_status(service: dict[str, Any], result: TickResult) -> None:
    meta = service["metadata"]
    decision = result.decision
    wanted = autoscaling_status(
        service, decision, enabled=result.enabled, scaled=result.scaled, now=_now()
    )
    changes = status_changes(service.get("status", {}) or {}, wanted)
    if changes:
        await _kube().patch_status(meta["namespace"], meta["name"], changes)
    if result.scaled and decision is not None:
        direction = (
            "ScaledUp" if decision.replicas > (result.previous_replicas or 0) else "ScaledDown"
        )
        kopf.event(
            cast(Any, service),
            type="Normal",
            reason=direction,
            message=f"{result.previous_replicas} -> {decision.replicas} replicas: "
            f"{decision.reason}: {decision.message}",
        )
        log.info(
            "scaled %s/%s %s -> %s (%s: %s)", meta["namespace"], meta["name"],
            result.previous_replicas, decision.replicas, decision.reason, decision.message,
        )  # fmt: skip


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": "embedfleet"})
async def deployment_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    owner = next(
        (
            o
            for o in body.metadata.get("ownerReferences", [])
            if o.get("kind") == "EmbeddingService"
        ),
        None,
    )
    if owner is None or type is None:
        return
    await reconcile(body.metadata["namespace"], owner["name"], owner["uid"])


async def reconcile(namespace: str, name: str, uid: str) -> None:
    """One pass on the service as it is now (read under the service's lock: an event's copy
    may already be stale), retried through an API outage. Every handler that reconciles
    (create, update, resume, resync, a Deployment event) comes through here."""
    if "kube" not in _state:
        return  # a timer firing while the operator starts or stops: the next pass does it

    async def attempt() -> None:
        async with _locks[uid or name]:
            try:
                service = await _kube().read_service(namespace, name)
                if service is None or service["metadata"].get("deletionTimestamp"):
                    return  # gone or being deleted: the garbage collector removes what it owned
                await _reconcile(service)
            except ApiException as error:
                if error.status == 404:
                    return  # deleted while we worked: nothing left to reconcile
                raise

    await _retrying(attempt, "reconcile")


async def _reconcile(service: dict[str, Any]) -> None:
    kube = _kube()
    meta, spec = service["metadata"], service["spec"]
    namespace, name = meta["namespace"], meta["name"]
    apply_error = await _apply_workers(service)
    deployment = await kube.read_deployment(namespace, name)
    if deployment is not None and apply_error is None:
        current = deployment.get("spec", {}).get("replicas")
        # Until our replicas manager has written once, the count is the API default (1).
        managers = {m.get("manager") for m in deployment["metadata"].get("managedFields") or []}
        if REPLICAS_MANAGER not in managers:
            current = None
        wanted = replicas_to_set(spec, current)
        if wanted is not None:
            await kube.scale(namespace, name, wanted)
            deployment = await kube.read_deployment(namespace, name)
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(name).items())
    pods = await kube.list_pods(namespace, selector)
    # Workers that run but stay unready may say why on /health (a model that cannot load).
    load_errors = await load_failures(_state["http"], pods, _settings().scrape_timeout_seconds)
    wanted_status = compute_status(
        service, deployment, pods, apply_error=apply_error, now=_now(), load_errors=load_errors
    )
    current_status = service.get("status", {}) or {}
    changes = status_changes(current_status, wanted_status)
    if changes:
        await kube.patch_status(namespace, name, changes)
        _announce(service, current_status, wanted_status)


async def _apply_workers(service: dict[str, Any]) -> Problem | None:
    """Applies the workers' objects unless this generation was refused for good (see
    refusals.py); the refusal, if any, for status."""
    kube, meta = _kube(), service["metadata"]
    uid, generation, now = meta.get("uid", ""), int(meta.get("generation", 0)), time.monotonic()
    refusal = _refusals.get(uid)
    if not should_apply(refusal, generation=generation, now=now):
        assert refusal is not None
        return refusal.problem  # the same spec would be refused again: wait for a new one
    try:
        await kube.apply(build_deployment(service, worker_image=_settings().worker_image))
        await kube.apply(build_service(service))
        pdb = build_pdb(service)
        if pdb is None:
            await kube.delete_pdb(meta["namespace"], meta["name"])
        else:
            await kube.apply(pdb)
    except ApiException as error:
        status = int(error.status or 0)
        message = refusal_message(status, error.reason, error.body)
        refusal = refused(refusal, generation=generation, status=status, message=message, now=now)
        if refusal is None:
            _refusals.pop(uid, None)
        else:
            _refusals[uid] = refusal
        if refusal is None or not refusal.permanent:
            raise  # a moment's refusal: retried every second like an outage (_retrying)
        log.warning("%s/%s generation %d: %s; not retried before the spec changes (or %gs)",
                    meta["namespace"], meta["name"], generation, message,
                    refusal.retry_at - now)  # fmt: skip
        return refusal.problem
    _refusals.pop(uid, None)
    return None


def _announce(service: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
    """A Kubernetes Event when readiness or degradation flips, or Degraded names a new cause,
    so `kubectl describe` and `kubectl get events` tell the story (why workers fail, and when
    they recover)."""
    old = {c["type"]: (c["status"], c.get("reason")) for c in before.get("conditions", []) or []}
    healthy = {"Ready": "True", "Degraded": "False"}
    # A first Ready is news either way; a first Degraded only when it is True.
    unset = {"Ready": (None, None), "Degraded": ("False", None)}
    for condition in after["conditions"]:
        kind = condition["type"]
        if kind not in healthy:
            continue
        status, reason = old.get(kind, unset[kind])
        # A new cause while still Degraded (Unschedulable, then OOMKilled) is news too.
        new_cause = (
            kind == "Degraded" and condition["status"] == "True" and reason != condition["reason"]
        )
        if status != condition["status"] or new_cause:
            kopf.event(
                cast(Any, service),
                type="Normal" if condition["status"] == healthy[kind] else "Warning",
                reason=condition["reason"],
                message=condition["message"] or f"{kind} is {condition['status']}",
            )
