"""The operator's side of scale from zero: while a scale-to-zero fleet is at zero, it keeps one
long poll open on the activator's /demand (activator.py), and the moment a request waits there
it scales the fleet up (Autoscaler.activate) instead of waiting for the next tick. One of these
runs beside each service's schedule (handlers.schedule); a poll costs an idle connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from embedfleet_operator.cache import ClusterCache
from embedfleet_operator.observer import pod_is_ready, pod_port, pod_url
from embedfleet_operator.resources import scales_to_zero
from embedfleet_operator.spec import EmbeddingService, SpecError, parse_service
from embedfleet_operator.ticks import Stopped

IDLE_CHECK_SECONDS = 1.0  # how often a fleet that is not at zero is looked at again (cache only)
POLL_SECONDS = 25.0  # one /demand poll's length (the activator caps it at 30)


def activator_url(
    cache: ClusterCache, service: EmbeddingService, expected_start: float | None = None
) -> str | None:
    """The /demand URL of the service's ready activator pod while its fleet is at zero; it
    carries the measured worker start, for the Retry-After of requests the activator refuses."""
    if not scales_to_zero(service.spec):
        return None
    deployment = cache.deployment(service.namespace, service.name)
    if deployment is None or int((deployment.get("spec") or {}).get("replicas") or 0) > 0:
        return None
    for pod in cache.activator_pods(service.namespace, service.name):
        ip, port = (pod.get("status") or {}).get("podIP"), pod_port(pod, "http")
        if ip and port is not None and pod_is_ready(pod):
            start = "" if expected_start is None else f"&start={expected_start:.1f}"
            return pod_url(ip, port, f"/demand?wait={POLL_SECONDS:g}{start}")
    return None


async def watch_demand(
    body: Any,
    stopped: Stopped,
    cache: ClusterCache,
    http: httpx.AsyncClient,
    activate: Callable[[EmbeddingService], Awaitable[None]],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    expected_start: Callable[[EmbeddingService], float | None] = lambda _: None,
) -> None:
    """Until `stopped`: poll the activator while the fleet is at zero; `activate` on demand."""
    while not stopped:
        try:
            service = parse_service(body)
        except SpecError:
            await sleep(IDLE_CHECK_SECONDS)
            continue
        url = activator_url(cache, service, expected_start(service))
        if url is None or service.deleting:
            await sleep(IDLE_CHECK_SECONDS)
            continue
        try:
            answer = await http.get(url, timeout=POLL_SECONDS + 5.0)
            held = int(answer.json().get("held", 0)) if answer.status_code == 200 else 0
        except (httpx.HTTPError, ValueError, AttributeError):
            await sleep(IDLE_CHECK_SECONDS)  # restarting, or not our activator's answer
            continue
        if held > 0:
            await activate(service)
