"""kopf wiring only: events become one reconcile pass (reconciler.py), and each service's daemon
runs its schedule of autoscaling ticks and resyncs (ticks.py, autoscaler.py). Every pass runs
under the service's lock, inside the one retry wrapper (api_outage.Retrying). The parts live in
kopf's `memo` (assembly.py); reads come from kopf indexes (cache.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import kopf

from embedfleet_operator import assembly, cache
from embedfleet_operator.crd import GROUP, KIND, PLURAL, VERSION
from embedfleet_operator.demand import watch_demand
from embedfleet_operator.settings import EmbedfleetSettings
from embedfleet_operator.spec import EmbeddingService, SpecError, parse_service
from embedfleet_operator.ticks import ServiceLoop


def register() -> None:
    """The handlers that need settings-free registration at run time (called once)."""
    cache.register()
    kopf.daemon(GROUP, VERSION, PLURAL, id="schedule", cancellation_timeout=2.0)(schedule)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **indexes: Any) -> None:
    assembly.configure_kopf(settings, memo.settings)
    await assembly.start(memo, indexes)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await assembly.stop(memo)


async def _reconcile(memo: kopf.Memo, body: Mapping[str, Any]) -> None:
    async def attempt() -> None:
        await memo.reconciler.reconcile(body)

    async with memo.locks[body["metadata"]["uid"]]:
        await memo.retrying(attempt, "reconcile")


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile_on_change(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile(memo, body)


# A prefetch Job that progresses, succeeds or fails moves its service on (prefetch.py).
@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": "embedfleet"})
@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": "embedfleet"})
async def deployment_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    owners = [o for o in body.metadata.get("ownerReferences", []) if o.get("kind") == KIND]
    for owner in owners:
        # A copy: the index's live store changes while we await (a service deleted meanwhile).
        for service in list(memo.services.get((body.metadata.namespace, owner["name"]), ())):
            await _reconcile(memo, service)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)  # optional: adds no finalizer
async def forget(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.locks.pop(body.metadata.uid, None)
    memo.reconciler.forget(body.metadata.uid)
    memo.autoscaler.forget(body.metadata.uid, body.metadata.namespace, body.metadata.name)


async def schedule(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """One service's autoscaling ticks and resyncs, spread and bounded (ticks.py)."""
    ours: EmbedfleetSettings = memo.settings
    loop = ServiceLoop(
        uid=body.metadata.uid or "", tick_seconds=ours.autoscale_seconds,
        resync_seconds=ours.resync_seconds, gate=memo.gate, clock=time.monotonic,
    )  # fmt: skip

    async def tick(late: float, skipped: int) -> None:
        async def attempt() -> None:
            try:
                service = parse_service(body)  # kopf keeps `body` current
            except SpecError:
                return  # the reconciler reports it (InvalidSpec)
            if not service.deleting:
                await memo.autoscaler.tick(service, late=late, skipped=skipped)

        async with memo.locks[body.metadata.uid]:
            await memo.retrying(attempt, "autoscaling")

    async def activate(service: EmbeddingService) -> None:
        async def attempt() -> None:
            await memo.autoscaler.activate(service)

        async with memo.locks[body.metadata.uid]:
            await memo.retrying(attempt, "activation")

    # Scale from zero the moment a request waits at the activator (demand.py), beside the ticks.
    demand = asyncio.create_task(
        watch_demand(body, stopped, memo.cache, memo.http, activate,
                     expected_start=memo.autoscaler.expected_start),
        name="demand",
    )  # fmt: skip
    try:
        await loop.run(stopped, tick, lambda: _reconcile(memo, body))
    finally:
        demand.cancel()
