"""Connection lifetime against a real `embedfleet-worker serve` (CPU, all-MiniLM-L6-v2): the
worker closes keep-alive connections between requests so clients spread over new replicas,
and no client ever sees an error for it.

* The official openai client, one instance with its default keep-alive pool shared by threads
  and `max_retries=0`, sends 2,000 requests across many connection-age expiries: every answer
  is right and the connections really were renewed (counted from the access log's peer ports
  and from the worker's metrics).
* A client that has already sent its next request on a connection the worker is closing gets
  its first answer whole and then a clean end of stream (never a reset), and its resent request
  is answered on a new connection.
* An idle pooled connection is not closed under a client whose pool keeps it for 5 s (httpx and
  the openai SDK): the worker's keep-alive timeout is longer, and the age bound only ever acts
  on a response."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedfleet_worker.metrics import (
    CLIENT_CONNECTIONS,
    CONNECTIONS_OPENED,
    CONNECTIONS_RECYCLED,
    REQUESTS_TOTAL,
)
from tests.worker.server_process import WorkerProcess, start_worker

pytestmark = pytest.mark.slow

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
AGE_S = 3.0  # divided by the 6 pooled connections (floor 0.6 s): 2,000 requests cross many
THREADS = 6
REQUESTS = 2000
TOPICS = ("rivers", "mountains", "engines", "clouds", "kernels", "caches", "queues", "nodes")
TEXTS = [f"connection test sentence number {i} about {topic}" for i, topic in enumerate(TOPICS)]


def serving(folder: Path, *args: str) -> Iterator[WorkerProcess]:
    """A worker for a module's tests; it must exit cleanly, with no traceback in its log."""
    process = start_worker(folder, *args)
    yield process
    assert process.terminate() == 0
    assert "Traceback" not in process.log(), process.log()[-3000:]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    yield from serving(
        tmp_path_factory.mktemp("conn"), "--max-connection-age-seconds", str(AGE_S),
        "--max-connection-requests", "0",  # the age rule alone (the request bound: unit tests)
    )  # fmt: skip


def metrics(worker: WorkerProcess) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(worker.base_url + "/metrics").text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def access_ports(worker: WorkerProcess) -> list[str]:
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    return [e["client"] for e in lines if e.get("msg") == "request" and e.get("client")]


def test_one_keepalive_client_renews_connections_without_a_single_error(
    worker: WorkerProcess,
) -> None:
    client = openai.OpenAI(base_url=worker.api_url, api_key="unused", max_retries=0)
    reference = np.array(
        [d.embedding for d in client.embeddings.create(model=MODEL, input=TEXTS).data]
    )
    before, ports_before = metrics(worker), len(access_ports(worker))
    errors: list[str] = []
    wrong: list[str] = []
    lock = threading.Lock()

    def send(thread: int) -> None:
        for i in range(REQUESTS // THREADS + (thread < REQUESTS % THREADS)):
            index = (thread * 7 + i) % len(TEXTS)
            try:
                answer = client.embeddings.create(model=MODEL, input=TEXTS[index])
            except openai.OpenAIError as error:
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            vector = np.array(answer.data[0].embedding)
            if float(vector @ reference[index]) < 0.9999:
                with lock:
                    wrong.append(f"request {thread}/{i} got another input's vector")

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    elapsed = time.monotonic() - started
    after = metrics(worker)

    assert errors == [], errors[:5]
    assert wrong == [], wrong[:5]
    served = after[REQUESTS_TOTAL] - before[REQUESTS_TOTAL]
    assert served == REQUESTS
    # Renewed: the access log names each request's peer (the client's port); every distinct
    # port is one TCP connection, and the worker counted the ones it closed.
    ports = access_ports(worker)[ports_before:]
    assert len(ports) == REQUESTS
    connections = len(set(ports))
    recycled = after[CONNECTIONS_RECYCLED] - before[CONNECTIONS_RECYCLED]
    expiries = elapsed / AGE_S
    assert connections >= min(50, expiries), (connections, elapsed)
    assert recycled >= connections - THREADS, (recycled, connections)
    assert after[CONNECTIONS_OPENED] - before[CONNECTIONS_OPENED] >= connections
    # ...and still kept alive: several requests per connection, not one each.
    assert REQUESTS / connections >= 2, (REQUESTS, connections)
    assert 1 <= after[CLIENT_CONNECTIONS] <= THREADS + 1
    print(f"{REQUESTS} requests in {elapsed:.1f}s over {connections} connections "
          f"({recycled:.0f} closed by the worker), 0 errors")  # fmt: skip


def _request(body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    return (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )


def _read_until_closed(sock: socket.socket) -> tuple[bytes, str]:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    return data, "eof"


@pytest.fixture(scope="module")
def closing_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """Every connection expires at its first response."""
    yield from serving(tmp_path_factory.mktemp("closing"), "--max-connection-age-seconds", "1e-6")


def test_a_request_sent_on_a_closing_connection_gets_a_clean_end(
    closing_worker: WorkerProcess,
) -> None:
    host, port = closing_worker.address
    first, second = _request({"input": "first"}), _request({"input": "second"})
    outcomes: list[str] = []
    # The second request lands before, during and after the worker writes the first answer
    # and closes: the delays sweep across the first request's whole service time.
    for step in range(60):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(first)
            time.sleep(step * 0.001)
            try:
                sock.sendall(second)
            except (BrokenPipeError, ConnectionResetError):
                outcomes.append("send refused")
                continue
            data, end = _read_until_closed(sock)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (step, data[:300])
        assert b"connection: close" in head.lower(), head
        assert len(json.loads(body)["data"][0]["embedding"]) == 384  # whole, and only one answer
        outcomes.append(end)
        # A clean end means: send it again on a new connection, and it is answered.
        retry = httpx.post(closing_worker.api_url + "/embeddings", json={"input": "second"})
        assert retry.status_code == 200
    assert outcomes == ["eof"] * len(outcomes), outcomes


@pytest.fixture(scope="module")
def default_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """The settings users get: keep-alive timeout 120 s, connection age 5 s."""
    yield from serving(tmp_path_factory.mktemp("default"))


def test_idle_pooled_connections_outlive_the_client_pool_expiry(
    default_worker: WorkerProcess,
) -> None:
    host, port = default_worker.address
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(_request({"input": "before idling"}))
        time.sleep(0.5)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"connection: close" not in answer.lower()
        idle = 6.0  # longer than httpx's and the openai SDK's 5 s pool expiry and the 5 s age
        readable, _, _ = select.select([sock], [], [], idle)
        assert not readable, "the worker closed an idle keep-alive connection"
        sock.sendall(_request({"input": "after idling"}))
        data, _ = _read_until_closed(sock)
    head = data.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200"), data[:200]
    assert b"connection: close" in head  # older than its bound: closed after this answer
