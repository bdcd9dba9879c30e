"""The autoscaler's eyes (I/O): the ready worker pods from the Service's EndpointSlices, each
pod's /metrics scraped concurrently with a short timeout, and per-pod rates from the previous
scrape of the same pod. A failed, slow or first scrape reports the pod as unmeasured, which
the policy never takes for "no load".

Ready pods the slices do not list yet are added from the pods themselves (the selector's pods
with Ready=True and an IP): the EndpointSlice controller lags readiness by a moment, and it
never publishes loopback addresses, which the local test control plane gives its pods."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from embedfleet_operator.fleet import PodObservation
from embedfleet_operator.scrape import (
    MetricsFormatError,
    WorkerSample,
    parse_worker_metrics,
    pod_rates,
)

Manifest = dict[str, Any]


@dataclass(frozen=True)
class PodTarget:
    uid: str
    name: str
    url: str


def pod_is_ready(pod: Manifest) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready and not pod["metadata"].get("deletionTimestamp")


def pod_port(pod: Manifest, port_name: str) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == port_name:
                return int(port["containerPort"])
    return None


def pod_url(address: str, port: int, path: str = "/metrics") -> str:
    host = address if ":" not in address else f"[{address}]"
    return f"http://{host}:{port}{path}"


def ready_targets(
    slices: Sequence[Manifest], pods: Sequence[Manifest] = (), port_name: str = "http"
) -> list[PodTarget]:
    """Ready endpoints, one per pod (a dual-stack Service lists a pod in two slices), plus
    ready pods the slices do not list."""
    targets: dict[str, PodTarget] = {}
    for endpoint_slice in slices:
        ports = [p for p in endpoint_slice.get("ports") or [] if p.get("name") == port_name]
        if not ports or ports[0].get("port") is None:
            continue
        port = int(ports[0]["port"])
        for endpoint in endpoint_slice.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            # The API: an unset `ready` is to be read as ready; terminating pods are not.
            if conditions.get("ready") is False or conditions.get("terminating"):
                continue
            addresses = endpoint.get("addresses") or []
            ref = endpoint.get("targetRef") or {}
            if not addresses:
                continue
            uid = ref.get("uid") or addresses[0]
            name = ref.get("name") or addresses[0]
            targets.setdefault(uid, PodTarget(uid, name, pod_url(addresses[0], port)))
    for pod in pods:
        ip, listening = (pod.get("status") or {}).get("podIP"), pod_port(pod, port_name)
        uid = pod["metadata"]["uid"]
        if ip and listening is not None and pod_is_ready(pod):
            url = pod_url(ip, listening)
            targets.setdefault(uid, PodTarget(uid, pod["metadata"]["name"], url))
    return sorted(targets.values(), key=lambda t: t.name)


@dataclass(frozen=True)
class Scrape:
    pods: tuple[PodObservation, ...]
    failures: tuple[str, ...]  # pod: why


class Scraper:
    """One per EmbeddingService: scrapes its ready workers, remembering each pod's last good
    sample for the next rate."""

    def __init__(self, http: httpx.AsyncClient, timeout_seconds: float) -> None:
        self._http = http
        self._timeout = timeout_seconds
        self._samples: dict[str, WorkerSample] = {}

    async def _fetch(self, target: PodTarget, now: float) -> WorkerSample:
        response = await self._http.get(target.url, timeout=self._timeout)
        response.raise_for_status()
        return parse_worker_metrics(response.text, now)

    async def scrape(self, targets: Sequence[PodTarget], now: float) -> Scrape:
        results = await asyncio.gather(
            *(self._fetch(t, now) for t in targets), return_exceptions=True
        )
        pods, failures = [], []
        for target, result in zip(targets, results, strict=True):
            if isinstance(result, (httpx.HTTPError, MetricsFormatError)):
                failures.append(f"{target.name}: {type(result).__name__}: {result}".strip())
                pods.append(PodObservation(target.name, None))
                continue
            if isinstance(result, BaseException):
                raise result
            pods.append(
                PodObservation(target.name, pod_rates(self._samples.get(target.uid), result))
            )
            self._samples[target.uid] = result
        live = {t.uid for t in targets}
        for uid in [u for u in self._samples if u not in live]:
            del self._samples[uid]  # gone or not ready: a comeback starts a fresh rate
        return Scrape(tuple(pods), tuple(failures))


async def load_failures(
    http: httpx.AsyncClient, pods: Sequence[Manifest], timeout_seconds: float,
    port_name: str = "http",
) -> dict[str, str]:  # fmt: skip
    """Pod name -> the error of a worker that runs but could not load its model: its /health
    answers 503 with it while the pod stays unready (the worker stays up to say why)."""
    targets = []
    for pod in pods:
        ip, port = (pod.get("status") or {}).get("podIP"), pod_port(pod, port_name)
        running = (pod.get("status") or {}).get("phase") == "Running"
        if ip and port is not None and running and not pod_is_ready(pod):
            targets.append((pod["metadata"]["name"], pod_url(ip, port, "/health")))

    async def probe(url: str) -> str | None:
        try:
            response = await http.get(url, timeout=timeout_seconds)
            body = response.json() if response.status_code == 503 else {}
        except (httpx.HTTPError, ValueError):
            return None  # still starting, or not our worker's answer: nothing to report
        if not isinstance(body, dict) or body.get("status") != "failed" or not body.get("error"):
            return None
        return str(body["error"])

    found = await asyncio.gather(*(probe(url) for _, url in targets))
    return {name: error for (name, _), error in zip(targets, found, strict=True) if error}
