"""503 while the model loads and when it failed to load: `/health`, `/ready` and the API."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from embedfleet_worker.http.app import create_app
from embedfleet_worker.http.worker_state import WorkerState
from embedfleet_worker.settings import WorkerSettings
from tests.worker.server_process import start_worker_unready


def test_requests_during_loading_get_503_with_retry_after() -> None:
    # The ASGI app without its lifespan: exactly the state between start and model ready.
    state = WorkerState.from_settings(WorkerSettings())
    transport = httpx.ASGITransport(app=create_app(state))

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            return [
                await client.get("/health"),
                await client.get("/ready"),
                await client.post("/v1/embeddings", json={"input": "x"}),
            ]

    health, ready, embed = asyncio.run(scenario())
    assert (health.status_code, health.json()) == (200, {"status": "alive"})
    assert (ready.status_code, ready.json()) == (503, {"status": "loading"})
    assert embed.status_code == 503
    assert embed.headers["retry-after"] == "5"
    assert embed.json()["error"]["code"] == "engine_unavailable"
    assert "loading" in embed.json()["error"]["message"]


def test_a_model_that_fails_to_load_fails_liveness(tmp_path: Path) -> None:
    worker = start_worker_unready(tmp_path, "--model", "no-such-org/no-such-model", "--offline")
    try:
        for _ in range(600):  # bounded: 60 s
            try:
                health = httpx.get(worker.base_url + "/health", timeout=2)
            except httpx.TransportError:
                health = None
            if health is not None and health.status_code == 503:
                break
            time.sleep(0.1)
        assert health is not None
        assert health.json()["status"] == "failed"
        assert httpx.get(worker.base_url + "/ready").json() == {"status": "failed"}
        embed = httpx.post(worker.api_url + "/embeddings", json={"input": "x"})
        assert embed.status_code == 503
        assert "failed to load" in embed.json()["error"]["message"]
    finally:
        worker.terminate()
