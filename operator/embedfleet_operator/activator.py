"""The activator (`embedfleet-operator activate`): the process a scale-to-zero EmbeddingService's
Kubernetes Service points at while no worker is ready. It holds each request (activation.py's
bounds), tells the operator there is demand (a long-polled GET /demand, which the operator
answers by scaling from zero at once), and forwards each held request to the workers' own
Service as soon as a connection to it succeeds, with `Connection: close` so the client's
keep-alive pool reconnects through the Kubernetes Service, which by then points at the workers.

It needs no Kubernetes API access at all (no token is mounted): it learns of workers by
connecting to their Service, and the operator comes to it for demand. Embedding requests are
idempotent, so a forward that fails before an answer is simply tried again."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from embedfleet_operator.activation import (
    HoldLimits,
    admit,
    demand_answer,
    error_body,
    forwarded_headers,
    retry_after,
    waited_too_long,
    with_measured_start,
    worker_not_serving,
)

log = logging.getLogger("embedfleet.activator")
ENV_PREFIX = "EMBEDFLEET_ACTIVATOR_"
RETRY_SECONDS = 0.25  # between connection attempts to the workers while none is ready
DEMAND_WAIT_SECONDS = 30.0  # the longest a /demand poll is held open
_UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


class _NotServingError(Exception):
    """A worker answered that it is loading or draining: hold the request as if none answered."""


class ActivatorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.held = Gauge(
            "embedfleet_activator_held_requests", "Requests waiting for a worker.", registry=r
        )
        self.hold_time = Histogram(
            "embedfleet_activator_hold_seconds",
            "How long a request waited for a worker.",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.activations = Counter(
            "embedfleet_activator_activations", "Times demand met an empty fleet.", registry=r
        )
        self.requests = Counter(
            "embedfleet_activator_requests", "Requests by outcome.", ["outcome"], registry=r
        )


class Activator:
    def __init__(
        self, workers: str, limits: HoldLimits, *, max_body_bytes: int, metrics: ActivatorMetrics
    ) -> None:
        self.workers_url = f"http://{workers}"
        self.limits, self.max_body_bytes, self.metrics = limits, max_body_bytes, metrics
        self.held = 0
        self.activations = 0
        self.waiting_since: float | None = None  # when the current activation began
        self._demand = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/demand", self._demand_poll)
        app.router.add_route("*", "/{path:.*}", self._proxy)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=600.0)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def _stop(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _ready(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _demand_poll(self, request: web.Request) -> web.Response:
        """Answers when a request is held (at once if one is), or after `wait` seconds. The
        operator's poll carries its measured worker start, which Retry-After counts down."""
        self.limits = with_measured_start(self.limits, request.query.get("start"))
        wait = min(float(request.query.get("wait", DEMAND_WAIT_SECONDS)), DEMAND_WAIT_SECONDS)
        if not self.held:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._demand.wait(), timeout=wait)
        return web.json_response(dict(demand_answer(self.held, self.activations)))

    def _refuse(self, reason: str, status: int = 503) -> web.Response:
        self.metrics.requests.labels(reason).inc()
        started = None if self.waiting_since is None else time.monotonic() - self.waiting_since
        headers = {"Retry-After": str(retry_after(self.limits, started))} if status == 503 else {}
        response = web.Response(
            status=status, body=error_body(reason), headers=headers, content_type="application/json"
        )
        response.force_close()
        return response

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse("too_large", 413)
        admission = admit(self.held, self.limits)
        if not admission.held:
            return self._refuse(admission.reason)
        arrived = time.monotonic()
        self._hold()
        try:
            return await self._forward(request, body, arrived)
        finally:
            self._release(arrived)

    def _hold(self) -> None:
        self.held += 1
        self.metrics.held.set(self.held)
        self._demand.set()

    def _release(self, arrived: float) -> None:
        self.held -= 1
        self.metrics.held.set(self.held)
        self.metrics.hold_time.observe(time.monotonic() - arrived)
        if not self.held:
            self._demand.clear()
            self.waiting_since = None

    async def _forward(self, request: web.Request, body: bytes, arrived: float) -> web.Response:
        assert self._session is not None
        url = self.workers_url + request.rel_url.path_qs
        headers = forwarded_headers(request.headers.items())
        attempt = 0
        while True:
            try:
                async with self._session.request(
                    request.method, url, data=body, headers=headers, allow_redirects=False
                ) as answer:
                    payload = await answer.read()
                    if worker_not_serving(answer.status, payload):
                        raise _NotServingError
                    response = web.Response(
                        status=answer.status,
                        body=payload,
                        headers=forwarded_headers(answer.headers.items()),
                    )
            except (*_UNREACHABLE, _NotServingError):
                attempt += 1
                if attempt == 1 and self.waiting_since is None:
                    self.waiting_since = arrived  # the first request to find no worker
                    self.activations += 1
                    self.metrics.activations.inc()
                    log.info("no worker ready: holding requests, demand signalled")
                if waited_too_long(time.monotonic() - arrived, self.limits):
                    return self._refuse("timeout")
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self.metrics.requests.labels("forwarded").inc()
            # The client reconnects through the Kubernetes Service for its next request: by
            # then it points at the workers, and this hop is out of the path.
            response.force_close()
            return response


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="embedfleet-operator activate")
    parser.add_argument("--host", default=env.get("EMBEDFLEET_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(env.get(ENV_PREFIX + "PORT", "8000")))
    parser.add_argument(
        "--workers",
        default=env.get(ENV_PREFIX + "WORKERS"),
        help="host:port of the workers' own Service",
    )
    parser.add_argument(
        "--hold-seconds", type=float, default=float(env.get(ENV_PREFIX + "HOLD_SECONDS", "1800"))
    )
    parser.add_argument(
        "--max-held", type=int, default=int(env.get(ENV_PREFIX + "MAX_HELD", "1000"))
    )
    parser.add_argument(
        "--retry-after", type=int, default=int(env.get(ENV_PREFIX + "RETRY_AFTER", "30"))
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(env.get(ENV_PREFIX + "MAX_BODY_BYTES", str(32 << 20))),
    )
    args = parser.parse_args(argv)
    if not args.workers:
        parser.error("--workers (or EMBEDFLEET_ACTIVATOR_WORKERS) is required")
    return args


def run(argv: Sequence[str]) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    limits = HoldLimits(args.max_held, args.hold_seconds, args.retry_after)
    activator = Activator(
        args.workers, limits, max_body_bytes=args.max_body_bytes, metrics=ActivatorMetrics()
    )
    web.run_app(
        activator.app(),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=5.0,
    )
    return 0
