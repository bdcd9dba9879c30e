"""The activator over real HTTP on loopback: requests held while no worker answers, the
operator's /demand poll answered the moment one waits, each held request forwarded once a worker
listens (with `Connection: close`, so keep-alive clients reconnect through the Service), and the
bounds: a full hold queue and an expired hold get 503 with Retry-After in the OpenAI error shape,
an oversized body 413. The worker here is a stand-in HTTP server (the network peer, not our
code); the end-to-end test with real workers is tests/operator/test_scale_from_zero.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from embedfleet_operator.activation import HoldLimits, worker_not_serving
from embedfleet_operator.activator import Activator, ActivatorMetrics


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def a_worker(port: int) -> web.AppRunner:
    """Answers any POST with its path and what it was sent, as JSON."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "path": request.path,
                                  "echo": await request.json(),
                                  "auth": request.headers.get("Authorization")})  # fmt: skip

    app = web.Application()
    app.router.add_post("/{path:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def with_activator(
    limits: HoldLimits, body: Callable[[TestServer, int, Activator], Awaitable[None]],
    max_body_bytes: int = 1 << 20,
) -> None:  # fmt: skip
    async def main() -> None:
        worker_port = free_port()
        activator = Activator(f"127.0.0.1:{worker_port}", limits, max_body_bytes=max_body_bytes,
                              metrics=ActivatorMetrics())  # fmt: skip
        server = TestServer(activator.app(), host="127.0.0.1")
        await server.start_server()
        try:
            await body(server, worker_port, activator)
        finally:
            await server.close()

    asyncio.run(main())


LIMITS = HoldLimits(max_held=100, hold_seconds=20.0, retry_after_seconds=30)


def test_a_request_is_held_until_a_worker_listens_and_the_operator_hears_of_it_at_once() -> None:
    async def body(server: TestServer, worker_port: int, activator: Activator) -> None:
        async with aiohttp.ClientSession() as client:
            poll = asyncio.create_task(client.get(server.make_url("/demand?wait=10")))
            await asyncio.sleep(0.2)
            assert not poll.done()  # nothing held: the poll stays open
            request = asyncio.create_task(client.post(
                server.make_url("/v1/embeddings"), json={"input": "hi"},
                headers={"Authorization": "Bearer k"}))  # fmt: skip
            demand = await asyncio.wait_for(poll, 2)
            assert (await demand.json())["held"] == 1
            await asyncio.sleep(0.6)
            assert not request.done()  # still held: no worker yet
            worker = await a_worker(worker_port)
            try:
                answer = await asyncio.wait_for(request, 5)
                assert answer.status == 200
                assert await answer.json() == {
                    "object": "list", "path": "/v1/embeddings", "echo": {"input": "hi"},
                    "auth": "Bearer k",
                }  # fmt: skip
                assert answer.headers["Connection"].lower() == "close"
                # With a worker listening, the next request passes straight through.
                again = await client.post(server.make_url("/v1/embeddings"), json={"input": 2})
                assert again.status == 200
            finally:
                await worker.cleanup()
        assert activator.activations == 1
        metrics = activator.metrics
        assert metrics.requests.labels("forwarded")._value.get() == 2
        assert metrics.held._value.get() == 0

    with_activator(LIMITS, body)


def test_rerank_and_tokenize_requests_are_held_and_forwarded_to_their_own_paths() -> None:
    """A reranker scaled to zero wakes the same way: the activator holds any path."""

    async def body(server: TestServer, worker_port: int, activator: Activator) -> None:
        paths = ["/v1/rerank", "/tokenize", "/v1/embeddings"]
        async with aiohttp.ClientSession() as client:
            requests = [
                asyncio.create_task(client.post(server.make_url(path), json={"n": index}))
                for index, path in enumerate(paths)
            ]
            await asyncio.sleep(0.5)
            assert not any(request.done() for request in requests)  # held: no worker yet
            worker = await a_worker(worker_port)
            try:
                answers = [await asyncio.wait_for(request, 5) for request in requests]
                echoed = [(a.status, await a.json()) for a in answers]
            finally:
                await worker.cleanup()
        assert [(status, sent["path"], sent["echo"]) for status, sent in echoed] == [
            (200, path, {"n": index}) for index, path in enumerate(paths)
        ]
        assert activator.activations == 1

    with_activator(LIMITS, body)


def _is_openai_503(answer: aiohttp.ClientResponse, payload: dict[str, Any], code: str) -> None:
    assert answer.status == 503
    assert int(answer.headers["Retry-After"]) >= 1
    assert payload["error"]["code"] == code
    assert payload["error"]["type"] == "service_unavailable"
    assert "zero replicas" in payload["error"]["message"]


def test_a_full_hold_queue_answers_503_with_retry_after() -> None:
    async def body(server: TestServer, worker_port: int, activator: Activator) -> None:
        async with aiohttp.ClientSession() as client:
            held = [asyncio.create_task(client.post(server.make_url("/v1/embeddings"), json={}))
                    for _ in range(2)]  # fmt: skip
            await asyncio.sleep(0.3)
            answer = await client.post(server.make_url("/v1/embeddings"), json={})
            _is_openai_503(answer, await answer.json(), "queue_full")
            for task in held:
                task.cancel()

    with_activator(HoldLimits(max_held=2, hold_seconds=20, retry_after_seconds=10), body)


def test_a_hold_past_the_startup_budget_answers_503_never_hangs() -> None:
    async def body(server: TestServer, worker_port: int, activator: Activator) -> None:
        async with aiohttp.ClientSession() as client:
            started = asyncio.get_running_loop().time()
            answer = await client.post(server.make_url("/v1/embeddings"), json={})
            waited = asyncio.get_running_loop().time() - started
            _is_openai_503(answer, await answer.json(), "timeout")
            assert 1.0 <= waited < 3.0

    with_activator(HoldLimits(max_held=10, hold_seconds=1.0, retry_after_seconds=10), body)


def test_an_oversized_body_is_413_in_the_openai_shape() -> None:
    async def body(server: TestServer, worker_port: int, activator: Activator) -> None:
        async with aiohttp.ClientSession() as client:
            answer = await client.post(server.make_url("/v1/embeddings"), data=b"x" * 4096)
            assert answer.status == 413
            assert (await answer.json())["error"]["type"] == "invalid_request_error"

    with_activator(LIMITS, body, max_body_bytes=1024)


def test_the_operators_demand_watch_wakes_the_fleet_when_a_request_waits() -> None:
    """demand.watch_demand against the real activator: polls while the fleet is at zero, and
    calls activate the moment a request is held."""
    from embedfleet_operator.demand import watch_demand
    from embedfleet_operator.spec import EmbeddingService
    from tests.unit.operator_fakes import FakeCache, ready_pod
    from tests.unit.operator_fakes import body as resource

    async def scenario(server: TestServer, worker_port: int, activator: Activator) -> None:
        cache = FakeCache()
        cache.objects[("Deployment", "ml", "emb")] = {"metadata": {"name": "emb"},
                                                      "spec": {"replicas": 0}}  # fmt: skip
        pod = ready_pod("emb-activator-1", ip="127.0.0.1", port=server.port or 0)
        cache.activator_pod_list[("ml", "emb")] = [pod]
        woken: list[str] = []
        done = asyncio.Event()

        async def activate(service: EmbeddingService) -> None:
            woken.append(service.name)
            cache.objects[("Deployment", "ml", "emb")]["spec"]["replicas"] = 1
            done.set()

        class Stopped:
            def __bool__(self) -> bool:
                return done.is_set()

        spec = {"model": {"name": "m"}, "autoscaling": {"minReplicas": 0,
                "targetGPUUtilizationPercent": 65}}  # fmt: skip
        async with aiohttp.ClientSession() as client, httpx.AsyncClient() as http:
            watcher = asyncio.create_task(
                watch_demand(resource(spec), Stopped(), cache, http, activate)
            )
            await asyncio.sleep(0.3)
            assert woken == []  # polling, nothing held
            request = asyncio.create_task(client.post(server.make_url("/v1/embeddings"),
                                                      json={}))  # fmt: skip
            await asyncio.wait_for(done.wait(), 3)
            assert woken == ["emb"]
            await asyncio.wait_for(watcher, 3)
            request.cancel()

    with_activator(LIMITS, scenario)


def test_retry_after_follows_the_measured_start_the_operators_poll_carries() -> None:
    async def body(server: TestServer, worker_port: int, activator: Activator) -> None:
        async with aiohttp.ClientSession() as client:
            refused = await client.post(server.make_url("/v1/embeddings"), json={})
            assert refused.headers["Retry-After"] == "10"  # the configured start
            poll = await client.get(server.make_url("/demand?wait=0&start=42.3"))
            assert (await poll.json())["held"] == 0
            refused = await client.post(server.make_url("/v1/embeddings"), json={})
            _is_openai_503(refused, await refused.json(), "queue_full")
            assert refused.headers["Retry-After"] == "43"  # no start under way: all of it

    with_activator(HoldLimits(max_held=0, hold_seconds=60, retry_after_seconds=10), body)


@pytest.mark.parametrize(
    ("status", "body", "not_serving"),
    [
        (503, b'{"error": {"code": "draining", "type": "service_unavailable"}}', True),
        (503, b'{"error": {"code": "engine_unavailable", "type": "service_unavailable"}}', True),
        (503, b'{"error": {"code": "queue_full"}}', False),  # a worker's overload is the client's
        (429, b'{"error": {"code": "draining"}}', False),
        (200, b'{"object": "list"}', False),
        (503, b"not json", False),
        (503, b'["a list"]', False),
        (503, b'{"error": "text"}', False),
    ],
)
def test_a_worker_that_is_loading_or_draining_is_not_serving(
    status: int, body: bytes, not_serving: bool
) -> None:
    assert worker_not_serving(status, body) is not_serving


def test_a_draining_workers_503_is_held_and_sent_again_not_returned() -> None:
    """While a fleet wakes, the workers' Service may still list a worker that is going away:
    its 503 "draining" must not reach the client while the hold lasts."""

    async def body(server: TestServer, worker_port: int, activator: Activator) -> None:
        refusals = 2

        async def embed(request: web.Request) -> web.Response:
            nonlocal refusals
            if refusals:
                refusals -= 1
                return web.json_response({"error": {"code": "draining"}}, status=503)
            return web.json_response({"object": "list"})

        app = web.Application()
        app.router.add_post("/v1/embeddings", embed)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", worker_port).start()
        try:
            async with aiohttp.ClientSession() as client:
                answer = await asyncio.wait_for(
                    client.post(server.make_url("/v1/embeddings"), json={}), timeout=10
                )
                assert answer.status == 200, await answer.text()
                assert (await answer.json()) == {"object": "list"}
                assert refusals == 0  # both refusals were met and held over
        finally:
            await runner.cleanup()

    with_activator(LIMITS, body)
