"""The observer's pure parts: the worker's real Prometheus output parsed into a sample, rates
between two samples with counter resets, ready targets read off EndpointSlices, and the
load errors of unready workers (over a mock HTTP transport: the network, not our code)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from embedfleet_operator import operator_metrics
from embedfleet_operator.observer import load_failures, ready_targets
from embedfleet_operator.scrape import (
    MetricsFormatError,
    WorkerSample,
    parse_worker_metrics,
    pod_rates,
)
from embedfleet_worker import metrics as worker_metrics


def test_the_operator_reads_the_names_the_worker_writes() -> None:
    pairs = {
        operator_metrics.WORKER_REQUESTS_TOTAL: worker_metrics.REQUESTS_TOTAL,
        operator_metrics.WORKER_INPUT_TOKENS_TOTAL: worker_metrics.INPUT_TOKENS_TOTAL,
        operator_metrics.WORKER_ENGINE_BUSY: worker_metrics.ENGINE_BUSY,
        operator_metrics.WORKER_GPU_UTILIZATION: worker_metrics.GPU_UTILIZATION,
        operator_metrics.WORKER_QUEUE_TOKENS: worker_metrics.QUEUE_TOKENS,
        operator_metrics.WORKER_QUEUE_REQUESTS: worker_metrics.QUEUE_REQUESTS,
        operator_metrics.WORKER_MODEL_INFO: worker_metrics.MODEL_INFO,
    }
    assert all(ours == theirs for ours, theirs in pairs.items()), pairs


def test_parses_a_real_worker_registry() -> None:
    metrics = worker_metrics.WorkerMetrics()
    metrics.requests.labels(code="200").inc(7)
    metrics.requests.labels(code="429").inc(3)
    metrics.input_tokens.inc(1234)
    metrics.on_batch(num_inputs=4, num_tokens=100, busy_seconds=2.5)
    metrics.on_queue_depth(tokens=512, requests=2)
    sample = parse_worker_metrics(generate_latest(metrics.registry).decode(), time=5.0)
    assert (sample.requests, sample.tokens, sample.busy_seconds) == (10, 1234, 2.5)
    assert (sample.queue_tokens, sample.queue_requests) == (512, 2)
    assert sample.started is not None  # process_start_time_seconds
    assert sample.started > 1e9
    assert sample.task is None  # no model loaded yet


@pytest.mark.parametrize("task", ["embed", "rerank"])
def test_the_task_a_worker_serves_comes_with_its_rates(task: str) -> None:
    metrics = worker_metrics.WorkerMetrics()
    metrics.model_info.labels(model="m", revision="", dtype="bfloat16", fingerprint="f",
                              task=task).set(1)  # fmt: skip
    first = parse_worker_metrics(generate_latest(metrics.registry).decode(), time=1.0)
    later = parse_worker_metrics(generate_latest(metrics.registry).decode(), time=2.0)
    assert first.task == task
    rates = pod_rates(first, later)
    assert rates is not None
    assert rates.task == task


def test_a_worker_that_served_nothing_yet_is_measured_at_zero() -> None:
    fresh = worker_metrics.WorkerMetrics()
    sample = parse_worker_metrics(generate_latest(fresh.registry).decode(), time=1.0)
    assert (sample.requests, sample.tokens, sample.busy_seconds) == (0, 0, 0)


@pytest.mark.parametrize(
    "text",
    ["", "garbage { not prometheus", "some_other_exporter_total 3\n"],
    ids=["empty", "garbage", "another-exporter"],
)
def test_rejects_what_is_not_a_worker(text: str) -> None:
    with pytest.raises(MetricsFormatError):
        parse_worker_metrics(text, time=0.0)


BASE = WorkerSample(
    time=100.0, requests=100, tokens=10_000, busy_seconds=50.0, gpu_utilization=0.5,
    queue_tokens=0, queue_requests=0, started=1000.0,
)  # fmt: skip


@pytest.mark.parametrize(
    ("later", "rps", "tps", "util"),
    [
        (replace(BASE, time=110.0, requests=150, tokens=15_000, busy_seconds=55.0), 5, 500, 0.5),
        # Restart seen through a counter going backwards: the new value is the increase.
        (replace(BASE, time=110.0, requests=20, tokens=2_000, busy_seconds=1.0, started=None),
         2, 200, 0.1),
        # Restart seen through the start time, even though counters already grew past before.
        (replace(BASE, time=110.0, requests=120, tokens=12_000, busy_seconds=60.0, started=1105.0),
         12, 1200, 1.0),
        (replace(BASE, time=110.0), 0, 0, 0),
    ],
    ids=["steady", "reset-by-counter", "reset-by-start-time", "quiet"],
)  # fmt: skip
def test_rates_between_samples(later: WorkerSample, rps: float, tps: float, util: float) -> None:
    rates = pod_rates(BASE, later)
    assert rates is not None
    assert (rates.requests_per_second, rates.tokens_per_second) == pytest.approx((rps, tps))
    assert rates.engine_utilization == pytest.approx(util)


def test_no_rate_from_a_single_sample() -> None:
    assert pod_rates(None, BASE) is None
    assert pod_rates(BASE, BASE) is None


def endpoint(ip: str, name: str, ready: bool | None = True, terminating: bool = False) -> Any:
    conditions: dict[str, Any] = {"terminating": terminating}
    if ready is not None:
        conditions["ready"] = ready
    return {"addresses": [ip], "conditions": conditions,
            "targetRef": {"kind": "Pod", "name": name, "uid": f"uid-{name}"}}  # fmt: skip


def test_ready_targets_from_endpoint_slices() -> None:
    slices = [
        {"ports": [{"name": "http", "port": 8000}],
         "endpoints": [endpoint("127.64.0.2", "w-b"), endpoint("127.64.0.3", "w-c", ready=False),
                       endpoint("127.64.0.4", "w-d", ready=None),
                       endpoint("127.64.0.5", "w-e", terminating=True)]},
        {"ports": [{"name": "http", "port": 8000}], "endpoints": [endpoint("127.64.0.2", "w-b")]},
        {"ports": [{"name": "other", "port": 9}], "endpoints": [endpoint("127.64.0.9", "w-z")]},
    ]  # fmt: skip
    targets = ready_targets(slices)
    assert [(t.name, t.url) for t in targets] == [
        ("w-b", "http://127.64.0.2:8000/metrics"),
        ("w-d", "http://127.64.0.4:8000/metrics"),
    ]


def pod(name: str, ip: str | None, ready: bool, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def test_ready_pods_the_slices_do_not_list_are_added() -> None:
    slices = [{"ports": [{"name": "http", "port": 8000}],
               "endpoints": [endpoint("127.64.0.2", "w-b")]}]  # fmt: skip
    pods = [
        pod("w-b", "127.64.0.2", True),  # listed in both: once
        pod("w-a", "127.64.0.7", True),
        pod("w-c", "127.64.0.8", False),
        pod("w-d", None, True),
        pod("w-e", "127.64.0.9", True, deleting=True),
    ]
    assert [(t.name, t.url) for t in ready_targets(slices, pods)] == [
        ("w-a", "http://127.64.0.7:8000/metrics"),
        ("w-b", "http://127.64.0.2:8000/metrics"),
    ]


def test_load_failures_reads_only_a_failed_workers_own_error() -> None:
    """Running, unready pods are asked on /health; only a 503 that says `failed` with an error
    counts (a loading worker, a ready pod, a stranger's answer or no answer do not)."""
    answers = {
        "127.0.0.1": (503, {"status": "failed", "error": "OSError: no model at /m"}),
        "127.0.0.2": (503, {"status": "loading"}),
        "127.0.0.3": (503, ["not", "ours"]),
        "127.0.0.4": (200, {"status": "alive"}),
    }
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.host not in answers:
            raise httpx.ConnectError("refused", request=request)
        status, body = answers[request.url.host]
        return httpx.Response(status, json=body)

    def pod(name: str, ip: str, *, ready: bool = False, phase: str = "Running") -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"podIP": ip, "phase": phase,
                       "conditions": [{"type": "Ready", "status": str(ready)}]},
        }  # fmt: skip

    names = ["failed", "loading", "stranger", "alive", "gone"]
    pods = [pod(name, f"127.0.0.{i}") for i, name in enumerate(names, start=1)]
    pods += [pod("ready", "127.0.0.6", ready=True), pod("pending", "127.0.0.7", phase="Pending")]

    async def run() -> dict[str, str]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            return await load_failures(http, pods, timeout_seconds=1)

    assert asyncio.run(run()) == {"failed": "OSError: no model at /m"}
    assert sorted(asked) == [f"http://127.0.0.{i}:8000/health" for i in range(1, 6)]
