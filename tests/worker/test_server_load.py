"""Concurrency tests against a real `embedfleet-worker serve` process (CPU, all-MiniLM-L6-v2):

* 500 concurrent requests of mixed sizes against a small admission queue: every answer is 200
  or 429, every 200 holds, in order, the vectors of its own inputs, and the request and input
  counters on /metrics moved by exactly what the client saw.
* SIGTERM in the middle of a load: every request already sent finishes with its vectors, new
  requests get 503 "draining", /ready turns 503, and the process exits 0 once drained.

The reference vector of each text comes from the same server, embedding the whole text pool in
one request before the load."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.worker.server_process import WorkerProcess, start_worker

pytestmark = pytest.mark.slow

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSIONS = 384
MIN_COSINE = 0.99999
ERROR_KEYS = {"message", "type", "param", "code"}

# Load test: a queue of a few requests' worth of tokens, so a burst of 500 overflows it.
LOAD_REQUESTS = 500
LOAD_MAX_INPUTS = 40
LOAD_QUEUE_TOKENS = 4000

# Drain test: enough queued work that the drain lasts well beyond the late requests' second.
DRAIN_REQUESTS = 60
DRAIN_INPUTS = (20, 60)
DRAIN_TIMEOUT_S = 240.0
LATE_REQUESTS = 8
LATE_WINDOW_S = 1.0

REQUEST_TIMEOUT = httpx.Timeout(240.0, connect=30.0)

Reference = dict[str, npt.NDArray[np.float64]]
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_VOCABULARY = (
    "river mountain engine token vector server model batch queue request signal cloud kernel "
    "python embedding search index cosine latency throughput replica cluster node memory cache "
    "quiet bright ancient careful sudden library garden winter harbour lantern orchard meadow "
    "café naïve résumé Zürich 東京 données"
)


def sentence_pool(count: int = 80, seed: int = 20240611) -> list[str]:
    """`count` distinct sentences of 1 to 48 words (a numbered prefix keeps them distinct)."""
    rng = random.Random(seed)
    vocabulary = _VOCABULARY.split()
    pool = []
    for index in range(count):
        length = 1 + (index * 29) % 48
        words = " ".join(rng.choice(vocabulary) for _ in range(length))
        pool.append(f"{index}. {words.capitalize()}.")
    assert len(set(pool)) == count
    return pool


# ----------------------------------------------------------------------------- helpers
@dataclass
class Outcome:
    """One finished request: what was sent, what came back, and when."""

    texts: list[str]
    started: float
    finished: float
    status: int | None = None
    body: Any = None
    headers: httpx.Headers | None = None
    error: str | None = None  # a transport error instead of a response


async def post_embeddings(
    client: httpx.AsyncClient,
    worker: WorkerProcess,
    texts: Sequence[str],
    extensions: dict[str, Any] | None = None,
) -> Outcome:
    started = time.monotonic()
    try:
        response = await client.post(
            worker.api_url + "/embeddings",
            json={"model": MODEL, "input": list(texts)},
            extensions=extensions,
        )
    except httpx.TransportError as error:
        return Outcome(list(texts), started, time.monotonic(), error=type(error).__name__)
    try:
        body: Any = response.json()
    except ValueError:  # not JSON: kept as text for the failure message
        body = response.text
    return Outcome(
        list(texts),
        started,
        time.monotonic(),
        status=response.status_code,
        body=body,
        headers=response.headers,
    )


def reference_vectors(worker: WorkerProcess, pool: Sequence[str]) -> Reference:
    """Each pool text's vector from one request to the same server, before any load."""
    response = httpx.post(
        worker.api_url + "/embeddings",
        json={"model": MODEL, "input": list(pool)},
        timeout=REQUEST_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(pool)))
    return {
        text: np.asarray(item["embedding"], dtype=np.float64)
        for text, item in zip(pool, data, strict=True)
    }


def assert_vectors_match(outcome: Outcome, reference: Reference) -> None:
    body = outcome.body
    assert body["object"] == "list"
    assert body["model"] == MODEL
    data = body["data"]
    assert [item["index"] for item in data] == list(range(len(outcome.texts)))
    vectors = np.asarray([item["embedding"] for item in data], dtype=np.float64)
    assert vectors.shape == (len(outcome.texts), DIMENSIONS)
    expected = np.stack([reference[text] for text in outcome.texts])
    cosine = (vectors * expected).sum(axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1)
    )
    worst = int(np.argmin(cosine))
    assert cosine[worst] >= MIN_COSINE, (
        f"input {worst} ({outcome.texts[worst]!r}) got a vector with cosine {cosine[worst]:.7f} "
        "to its reference"
    )


def assert_openai_error(outcome: Outcome, status: int, code: str) -> None:
    assert outcome.status == status, (outcome.status, outcome.body)
    assert isinstance(outcome.body, dict), outcome.body
    assert set(outcome.body) == {"error"}
    error = outcome.body["error"]
    assert set(error) == ERROR_KEYS
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["code"] == code
    assert outcome.headers is not None
    retry_after = outcome.headers.get("retry-after")
    assert retry_after is not None, f"{status} without Retry-After"
    assert retry_after.isdigit()
    assert int(retry_after) >= 1


def parse_metrics(text: str) -> Metrics:
    values: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def scrape(worker: WorkerProcess) -> Metrics:
    response = httpx.get(worker.base_url + "/metrics", timeout=10)
    assert response.status_code == 200
    return parse_metrics(response.text)


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_by_code(metrics: Metrics) -> dict[str, float]:
    return {
        dict(labels)["code"]: value
        for (name, labels), value in metrics.items()
        if name == "embedfleet_requests_total"
    }


def log_events(worker: WorkerProcess) -> list[dict[str, Any]]:
    events = []
    for line in worker.log().splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


@pytest.fixture
def pool() -> list[str]:
    return sentence_pool()


@pytest.fixture
def small_queue_worker(tmp_path: Path) -> Iterator[WorkerProcess]:
    worker = start_worker(tmp_path, "--max-queue-tokens", str(LOAD_QUEUE_TOKENS))
    try:
        yield worker
    finally:
        assert worker.terminate() == 0, worker.log()[-3000:]


# ----------------------------------------------------------------------------- load
async def run_burst(worker: WorkerProcess, batches: Sequence[Sequence[str]]) -> list[Outcome]:
    limits = httpx.Limits(max_connections=len(batches), max_keepalive_connections=len(batches))
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT) as client:
        return list(
            await asyncio.gather(*(post_embeddings(client, worker, texts) for texts in batches))
        )


def test_burst_of_mixed_requests(small_queue_worker: WorkerProcess, pool: list[str]) -> None:
    worker = small_queue_worker
    reference = reference_vectors(worker, pool)
    rng = random.Random(7)
    batches = [rng.choices(pool, k=rng.randint(1, LOAD_MAX_INPUTS)) for _ in range(LOAD_REQUESTS)]
    before = scrape(worker)

    outcomes = asyncio.run(run_burst(worker, batches))

    errors = [o.error for o in outcomes if o.error is not None]
    assert not errors, f"transport errors: {Counter(errors)}\n{worker.log()[-3000:]}"
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= {200, 429}, f"{statuses}\n{worker.log()[-3000:]}"
    assert statuses[200] >= 1, statuses
    assert statuses[429] >= 1, f"{statuses}: the queue never overflowed; lower its size"
    for outcome in outcomes:
        if outcome.status == 200:
            assert_vectors_match(outcome, reference)
        else:
            assert_openai_error(outcome, 429, "queue_full")
            assert outcome.body["error"]["type"] == "rate_limit_error"

    # The counters are bumped after each response is written: wait (bounded) until all landed.
    before_codes = requests_by_code(before)
    deadline = time.monotonic() + 10
    while True:
        after = scrape(worker)
        delta = {
            code: value - before_codes.get(code, 0.0)
            for code, value in requests_by_code(after).items()
        }
        if sum(delta.values()) >= LOAD_REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {code: n for code, n in delta.items() if n} == {
        str(status): float(count) for status, count in statuses.items()
    }
    embedded = sum(len(o.texts) for o in outcomes if o.status == 200)
    inputs_delta = metric(after, "embedfleet_inputs_total") - metric(
        before, "embedfleet_inputs_total"
    )
    assert inputs_delta == embedded


# ----------------------------------------------------------------------------- drain
@dataclass
class DrainRun:
    in_flight: list[Outcome]  # sent before the signal
    late: list[Outcome]  # sent after it
    ready_statuses: list[int]  # /ready right after the signal, until it answered 503
    ready_503_while_busy: bool  # /ready said 503 while requests sent before were unfinished
    pending_at_signal: int
    signalled: float


async def run_drain(worker: WorkerProcess, batches: Sequence[Sequence[str]]) -> DrainRun:
    bodies_sent: set[int] = set()

    def tracer(index: int) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
        async def trace(event: str, info: dict[str, Any]) -> None:
            if event == "http11.send_request_body.complete":
                bodies_sent.add(index)

        return trace

    size = len(batches) + LATE_REQUESTS + 8
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT) as client:
        tasks = [
            asyncio.create_task(
                post_embeddings(client, worker, texts, extensions={"trace": tracer(i)})
            )
            for i, texts in enumerate(batches)
        ]
        # Signal only once every body is on the wire and the server holds every request: each
        # is either waiting in the engine's queue or already answered.
        received = 0
        deadline = time.monotonic() + 60
        while received < len(batches) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if len(bodies_sent) < len(batches):
                continue
            metrics = parse_metrics((await client.get(worker.base_url + "/metrics")).text)
            queued = metric(metrics, "embedfleet_queue_requests")
            received = int(queued) + sum(task.done() for task in tasks)
        assert len(bodies_sent) == len(batches), "the requests were not all sent in 60 s"
        assert received == len(batches), f"the server holds {received} of {len(batches)}"
        pending_at_signal = sum(not task.done() for task in tasks)

        signalled = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)

        ready_statuses: list[int] = []
        ready_503_while_busy = False
        for _ in range(60):  # 3 s at most
            try:
                ready = await client.get(worker.base_url + "/ready")
            except httpx.TransportError:
                break
            ready_statuses.append(ready.status_code)
            if ready.status_code == 503:
                assert ready.json() == {"status": "draining"}
                ready_503_while_busy = not all(task.done() for task in tasks)
                break
            await asyncio.sleep(0.05)

        late_tasks = []
        interval = LATE_WINDOW_S / LATE_REQUESTS
        for index in range(LATE_REQUESTS):
            texts = list(batches[index][:3])
            late_tasks.append(asyncio.create_task(post_embeddings(client, worker, texts)))
            await asyncio.sleep(interval)

        in_flight = list(await asyncio.gather(*tasks))
        late = list(await asyncio.gather(*late_tasks))
    return DrainRun(
        in_flight, late, ready_statuses, ready_503_while_busy, pending_at_signal, signalled
    )


def test_sigterm_drains_in_flight_requests(tmp_path: Path, pool: list[str]) -> None:
    worker = start_worker(tmp_path, "--drain-timeout-seconds", str(DRAIN_TIMEOUT_S))
    try:
        reference = reference_vectors(worker, pool)
        # The shorter half of the pool: a drain of several seconds rather than half a minute.
        short = sorted(pool, key=len)[: len(pool) // 2]
        rng = random.Random(11)
        batches = [rng.choices(short, k=rng.randint(*DRAIN_INPUTS)) for _ in range(DRAIN_REQUESTS)]

        run = asyncio.run(run_drain(worker, batches))

        try:
            exit_code = worker.process.wait(timeout=DRAIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit within the drain timeout\n{worker.log()[-3000:]}")
        exited = time.monotonic()
    finally:
        worker.terminate()
    log = worker.log()[-3000:]
    assert exit_code == 0, log

    # Nothing sent before the signal was lost: all of it finished, with the right vectors.
    assert run.pending_at_signal > 0, "the load finished before the signal; make it longer"
    for outcome in run.in_flight:
        assert outcome.error is None, f"{outcome.error}\n{log}"
        assert outcome.status == 200, f"{outcome.status} {outcome.body}\n{log}"
        assert_vectors_match(outcome, reference)
    drained = max(outcome.finished for outcome in run.in_flight)
    assert run.signalled < drained < exited

    # /ready turned 503 as soon as the signal landed, while the drain was still running.
    assert run.ready_statuses
    assert run.ready_statuses[-1] == 503, run.ready_statuses
    assert run.ready_503_while_busy

    # Requests sent after the signal were refused while the drain ran; only once it was over
    # (the listener closes just before the process exits) may one fail to connect.
    refused = 0
    for outcome in run.late:
        if outcome.error is not None:
            assert outcome.started > drained, f"{outcome.error} during the drain\n{log}"
            continue
        assert_openai_error(outcome, 503, "draining")
        assert outcome.body["error"]["type"] == "service_unavailable"
        refused += 1
    assert refused >= 1

    events = log_events(worker)
    drained_events = [e for e in events if e.get("msg") == "drained"]
    assert drained_events
    assert drained_events[-1]["in_flight_left"] == 0
