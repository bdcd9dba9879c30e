"""The operator's parts, built once at startup into kopf's `memo` and closed at cleanup: kopf's
own settings, the API client, the watch-fed caches, the reconciler, the autoscaler, the retry
wrapper, the per-service locks and the gate that bounds concurrent passes."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, cast

import httpx
import kopf
import prometheus_client
from kubernetes_asyncio import client, config

from embedfleet_operator import cache
from embedfleet_operator.api_outage import RETRY_SECONDS, Retrying
from embedfleet_operator.autoscaler import Autoscaler
from embedfleet_operator.crd import GROUP, KIND, VERSION
from embedfleet_operator.events import Event
from embedfleet_operator.kube import Kube
from embedfleet_operator.operator_metrics import OperatorMetrics
from embedfleet_operator.reconciler import Reconciler
from embedfleet_operator.settings import EmbedfleetSettings
from embedfleet_operator.spec import EmbeddingService

MAX_CONCURRENT_PASSES = 16  # reconciles and ticks running at once, across services


class KopfEvents:
    """Events through kopf's poster (batched, rate-limited, at or above settings.posting)."""

    def post(self, service: EmbeddingService, event: Event) -> None:
        meta = {"name": service.name, "namespace": service.namespace, "uid": service.uid}
        ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": meta}
        kopf.event(cast(Any, ref), type=event.type, reason=event.reason, message=event.message)


def configure_kopf(settings: kopf.OperatorSettings, ours: EmbedfleetSettings) -> None:
    settings.peering.name, settings.peering.priority = ours.peering, ours.priority
    settings.peering.mandatory = True
    settings.persistence.finalizer = f"{GROUP}/operator"
    # Progress and diff-base in annotations: status belongs to the resource's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING
    # kopf's own requests (watch streams, peering) retry every second through an outage,
    # for up to 10 minutes, so the watches resume within a second of the apiserver's return.
    settings.networking.error_backoffs = [RETRY_SECONDS] * 600


async def start(memo: kopf.Memo, indexes: dict[str, Any]) -> None:
    ours: EmbedfleetSettings = memo.settings
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config()
    memo.kube = kube = Kube(client.ApiClient())
    memo.metrics = metrics = OperatorMetrics()
    if ours.metrics_address:
        host, _sep, port = ours.metrics_address.rpartition(":")
        memo.metrics_server, _thread = prometheus_client.start_http_server(
            int(port), addr=host or "0.0.0.0", registry=metrics.registry
        )
    memo.http = http = httpx.AsyncClient(follow_redirects=False)
    memo.cache = seen = cache.IndexCache(indexes)
    memo.services = indexes[cache.EMBEDDING_SERVICES]
    events = KopfEvents()
    memo.reconciler = Reconciler(
        kube, seen, http, events,
        worker_image=ours.worker_image, activator_image=ours.activator_image,
        probe_timeout_seconds=ours.scrape_timeout_seconds,
    )  # fmt: skip
    memo.autoscaler = Autoscaler(
        kube, seen, http, metrics, events,
        tick_seconds=ours.autoscale_seconds, scrape_timeout_seconds=ours.scrape_timeout_seconds,
    )  # fmt: skip
    memo.retrying = Retrying(memo.outage)
    memo.locks = collections.defaultdict(asyncio.Lock)  # one pass at a time per service
    memo.gate = asyncio.Semaphore(MAX_CONCURRENT_PASSES)


async def stop(memo: kopf.Memo) -> None:
    if getattr(memo, "http", None) is not None:
        await memo.http.aclose()
    if getattr(memo, "metrics_server", None) is not None:
        memo.metrics_server.shutdown()
    if getattr(memo, "kube", None) is not None:
        await memo.kube.api.close()
