"""handlers.py's wiring without a cluster: kopf's handler functions called as kopf calls them,
with the parts in `memo` built on the fakes of the API (operator_fakes.py). What runs between
them (the retry wrapper, the reconciler, the autoscaler, the schedule) is the product's own."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import httpx
import kopf

from embedfleet_operator import handlers
from embedfleet_operator.api_outage import ApiOutage, Retrying
from embedfleet_operator.autoscaler import Autoscaler
from embedfleet_operator.operator_metrics import OperatorMetrics
from embedfleet_operator.reconciler import Reconciler
from embedfleet_operator.settings import EmbedfleetSettings
from tests.unit.operator_fakes import Events, FakeCache, FakeKube, api_error, body


def parts(fail: Any = None, **settings: Any) -> tuple[kopf.Memo, FakeKube]:
    fake_cache = FakeCache()
    kube = FakeKube(cache=fake_cache)
    if fail is not None:
        kube.fail = fail
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    events = Events()
    memo = kopf.Memo(
        settings=EmbedfleetSettings(**settings),
        reconciler=Reconciler(
            kube,
            fake_cache,
            http,
            events,
            worker_image="w:1",
            activator_image="o:1",
            probe_timeout_seconds=1.0,
        ),
        autoscaler=Autoscaler(
            kube,
            fake_cache,
            http,
            OperatorMetrics(),
            events,
            tick_seconds=0.05,
            scrape_timeout_seconds=1.0,
        ),
        retrying=Retrying(ApiOutage(), retry_for=0.0),
        locks=collections.defaultdict(asyncio.Lock),
        gate=asyncio.Semaphore(4),
        services={("ml", "emb"): [body()]},
        cache=fake_cache,
        http=http,
    )
    return memo, kube


def test_a_create_is_one_reconcile_pass() -> None:
    memo, kube = parts()
    asyncio.run(handlers.reconcile_on_change(body=body(), memo=memo))
    assert [m["kind"] for m in kube.named("apply")] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]


def test_a_deployment_event_reconciles_its_owner_from_the_cache() -> None:
    memo, kube = parts()
    deployment = kopf.Body({"metadata": {"name": "emb", "namespace": "ml", "ownerReferences": [
        {"kind": "EmbeddingService", "name": "emb", "uid": "uid-emb"}]}})  # fmt: skip
    asyncio.run(handlers.deployment_changed(body=deployment, memo=memo))
    assert len(kube.named("apply")) == 3
    stranger = kopf.Body({"metadata": {"name": "x", "namespace": "ml"}})
    kube.calls.clear()
    asyncio.run(handlers.deployment_changed(body=stranger, memo=memo))
    assert kube.calls == []


def test_a_404_while_reconciling_ends_the_pass_quietly() -> None:
    memo, kube = parts(lambda call, arg: api_error(404))
    asyncio.run(handlers.reconcile_on_change(body=body(), memo=memo))
    assert kube.calls == []


def test_the_daemon_resyncs_and_ticks_until_stopped() -> None:
    memo, kube = parts(autoscale_seconds=0.05, resync_seconds=0.1)

    class Stopped:
        def __init__(self) -> None:
            self.at = time.monotonic() + 0.6

        def __bool__(self) -> bool:
            return time.monotonic() >= self.at

    resource = kopf.Body(body())
    asyncio.run(handlers.schedule(body=resource, memo=memo, stopped=Stopped()))
    assert len(kube.named("apply")) >= 3  # the resync reconciled
    ticks = [status for manager, status in kube.named("apply_status")
             if manager == "embedfleet-autoscaler"]  # fmt: skip
    assert ticks, "no autoscaling tick wrote status"
