"""A client that goes away before its answer: the worker drops the work, writes one access line
with 499 and counts it, and logs nothing at ERROR (no "Exception in ASGI application")."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx

from tests.cluster.processes import wait_until
from tests.worker.server_process import start_worker

MAX_BATCH_TOKENS = 16384  # the default; a batch running when its client left still finishes


def _sample(metrics: str, name: str) -> float:
    return next(
        float(line.split()[1]) for line in metrics.splitlines() if line.startswith(name + " ")
    )


def log_events(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_client_that_disconnects_is_logged_once_as_499_and_never_as_an_error(
    tmp_path: Path,
) -> None:
    worker = start_worker(tmp_path)
    try:
        host, port = worker.address
        inputs = [f"passage {i} " + "river mountain engine " * 60 for i in range(300)]
        for _ in range(3):  # 300 passages of about 185 tokens each: four batches a request
            payload = json.dumps({"input": inputs}).encode()
            with socket.create_connection((host, port)) as sock:
                sock.sendall(
                    b"POST /v1/embeddings HTTP/1.1\r\nHost: w\r\nContent-Type: application/json"
                    + f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                time.sleep(0.2)  # tokenised and queued, not done: then the client leaves
        wait_until(
            lambda: sum(e.get("status") == 499 for e in log_events(worker.log())) == 3,
            60, "three 499 access lines",
        )  # fmt: skip
        # The worker still serves, and counted what happened. A batch already running when its
        # client left finishes first (16K tokens take about 3 s on this CPU, more under load),
        # so the answer may take longer than httpx's default 5 s; the abandoned requests' other
        # batches were dropped, which the tokens computed show: about 170K tokens were sent.
        still = httpx.post(worker.api_url + "/embeddings", json={"input": "still here"}, timeout=60)
        assert still.is_success
        metrics = httpx.get(worker.base_url + "/metrics").text
        assert 'embedfleet_requests_total{code="499"} 3.0' in metrics
        computed = _sample(metrics, "embedfleet_batch_tokens_sum")
        assert computed <= 2 * MAX_BATCH_TOKENS + 16, f"{computed:.0f} tokens computed"
    finally:
        assert worker.terminate() == 0
    events = log_events(worker.log())
    assert [e for e in events if e.get("level") in {"error", "critical"}] == []
    assert "Traceback" not in worker.log()
    access = [e for e in events if e.get("msg") == "request"]
    assert sum(e["status"] == 499 for e in access) == 3
