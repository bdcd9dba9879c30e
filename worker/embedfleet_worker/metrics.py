"""The worker's Prometheus metrics: the one place their names live (DESIGN.md's table is the
contract the autoscaler reads). Each server owns its registry, so tests can run several.

With several API processes (`--api-processes`) prometheus_client runs in multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, set before it is imported): every process writes its values to
files in that folder and a scrape of any of them reads them all, so it does not matter which
process a scrape reaches. The connection counts are copied there after each API response and
once a second."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from embedfleet_worker.http.connections import ConnectionTable
from embedfleet_worker.process_age import process_age_seconds

REQUESTS_TOTAL = "embedfleet_requests_total"
INPUTS_TOTAL = "embedfleet_inputs_total"
INPUT_TOKENS_TOTAL = "embedfleet_input_tokens_total"
REQUEST_DURATION = "embedfleet_request_duration_seconds"
QUEUE_WAIT = "embedfleet_queue_wait_seconds"
BATCH_TOKENS = "embedfleet_batch_tokens"
BATCH_SIZE = "embedfleet_batch_size"
QUEUE_TOKENS = "embedfleet_queue_tokens"
QUEUE_REQUESTS = "embedfleet_queue_requests"
ENGINE_BUSY = "embedfleet_engine_busy_seconds_total"
GPU_UTILIZATION = "embedfleet_gpu_utilization_ratio"
GPU_MEMORY_USED = "embedfleet_gpu_memory_used_bytes"
MODEL_INFO = "embedfleet_model_info"
CONNECTIONS_OPENED = "embedfleet_connections_opened_total"
CONNECTIONS_RECYCLED = "embedfleet_connections_recycled_total"
CLIENT_CONNECTIONS = "embedfleet_client_connections"
EVENT_LOOP_LAG = "embedfleet_event_loop_lag_seconds"
# This worker's own start, set once when it turns Ready; the operator measures the whole start
# (creation to Ready, scheduling and image pull included) from the pod's timings.
WORKER_START = "embedfleet_worker_start_seconds"
WORKER_MODEL_LOAD = "embedfleet_worker_model_load_seconds"

# `*_created` series double the scrape size and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # read once, as the library does

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_TOKEN_BUCKETS = tuple(float(2**i) for i in range(4, 16))
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class WorkerMetrics:
    """Implements the engine's observer hooks and the HTTP layer's counters."""

    def __init__(
        self,
        connections: ConnectionTable | None = None,
        registry: CollectorRegistry | None = None,
        *,
        process_pid: int | None = None,  # whose process metrics to export (None: this one)
    ) -> None:
        self.registry = registry or CollectorRegistry()
        # Multiprocess mode: the values live in the shared files, which the registry reads.
        r = None if MULTIPROCESS_DIR else self.registry
        if MULTIPROCESS_DIR:
            MultiProcessCollector(self.registry, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
        self._connections: ConnectionCounters | None = None
        if connections is not None and MULTIPROCESS_DIR:
            self._connections = ConnectionCounters(connections)
        elif connections is not None:
            self.registry.register(ConnectionCollector(connections))
        # prometheus_client appends `_total` to counters itself.
        self.requests = Counter(
            REQUESTS_TOTAL.removesuffix("_total"),
            "Finished API requests by status code.",
            ["code"],
            registry=r,
        )
        # A worker that has served nothing yet must still export the series (at 0): the
        # autoscaler would otherwise take a fresh replica for a failed scrape.
        self.requests.labels(code="200")
        self.inputs = Counter(INPUTS_TOTAL.removesuffix("_total"), "Texts embedded.", registry=r)
        self.input_tokens = Counter(
            INPUT_TOKENS_TOTAL.removesuffix("_total"), "Tokens embedded.", registry=r
        )
        self.request_duration = Histogram(
            REQUEST_DURATION,
            "End-to-end API request duration.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            QUEUE_WAIT, "Admission to first batch start.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            BATCH_TOKENS, "Tokens per executed batch.", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            BATCH_SIZE, "Inputs per executed batch.", buckets=_SIZE_BUCKETS, registry=r
        )
        # Set by the main API process only (the engine reports to it): the others' stay 0.
        self.queue_tokens = Gauge(
            QUEUE_TOKENS, "Tokens waiting now.", registry=r, multiprocess_mode="livesum"
        )
        self.queue_requests = Gauge(
            QUEUE_REQUESTS, "Requests waiting now.", registry=r, multiprocess_mode="livesum"
        )
        self.engine_busy = Counter(
            ENGINE_BUSY.removesuffix("_total"),
            "Seconds the model was computing; its rate is the engine's utilisation.",
            registry=r,
        )
        self.event_loop_lag = Histogram(
            EVENT_LOOP_LAG,
            "How late the HTTP event loop ran (a 50 ms sleeper's lateness); stalls show here.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            MODEL_INFO,
            "The loaded model (value 1).",
            ["model", "revision", "dtype", "fingerprint", "task"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.worker_start = Gauge(
            WORKER_START,
            "Process start to Ready (model load and warm-up included); set once, at Ready.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_load = Gauge(
            WORKER_MODEL_LOAD,
            "The engine's model load, the part of the start spent loading; set at Ready.",
            registry=r,
            multiprocess_mode="livemax",
        )
        with contextlib.suppress(Exception):  # no NVML: the GPU gauges are simply absent
            self.registry.register(GpuCollector.create())
        # process_start_time_seconds lets the autoscaler tell a restart from a quiet tick: the
        # main API process's in every process, whichever a scrape reaches.
        ProcessCollector(
            pid=(lambda: "self") if process_pid is None else (lambda: process_pid),
            registry=self.registry,
        )
        # python_gc_collections_total{generation}: full collections stall the event loop (of
        # the process the scrape reached).
        GCCollector(registry=self.registry)

    def on_ready(self, load_seconds: float) -> None:
        """The worker turned Ready: how long its process took, and the model load's part."""
        age = process_age_seconds()
        if age is not None:
            self.worker_start.set(age)
        self.model_load.set(load_seconds)

    def sync_connections(self) -> None:
        """Multiprocess mode: copies this process's connection counts to the shared files."""
        if self._connections is not None:
            self._connections.sync()

    # EngineObserver -------------------------------------------------------------------
    def on_batch(self, num_inputs: int, num_tokens: int, busy_seconds: float) -> None:
        self.batch_size.observe(num_inputs)
        self.batch_tokens.observe(num_tokens)
        self.engine_busy.inc(busy_seconds)

    def on_queue_wait(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def on_queue_depth(self, tokens: int, requests: int) -> None:
        self.queue_tokens.set(tokens)
        self.queue_requests.set(requests)


# (name, help) of the connection series: one process's table, or every process's (multiprocess).
_CONNECTION_SERIES = (
    (CONNECTIONS_OPENED, "TCP connections accepted (probes and scrapes included)."),
    (
        CONNECTIONS_RECYCLED,
        "Client connections this worker closed between requests (age bound or drain).",
    ),
    (CLIENT_CONNECTIONS, "Open connections that carry API requests."),
)


class ConnectionCollector(Collector):
    """Reads the connection table at scrape time."""

    def __init__(self, table: ConnectionTable) -> None:
        self._table = table

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        t = self._table
        opened, recycled, clients = _CONNECTION_SERIES
        yield CounterMetricFamily(opened[0].removesuffix("_total"), opened[1], t.opened_total)
        yield CounterMetricFamily(recycled[0].removesuffix("_total"), recycled[1], t.recycled_total)
        yield GaugeMetricFamily(*clients, value=t.api_connections)


class ConnectionCounters:
    """The connection table's counts as multiprocess-mode series (ConnectionCollector's)."""

    def __init__(self, table: ConnectionTable) -> None:
        self._table = table
        opened, recycled, clients = _CONNECTION_SERIES
        self._opened = Counter(opened[0].removesuffix("_total"), opened[1], registry=None)
        self._recycled = Counter(recycled[0].removesuffix("_total"), recycled[1], registry=None)
        self._clients = Gauge(*clients, registry=None, multiprocess_mode="livesum")
        self._copied = (0, 0)

    def sync(self) -> None:
        t = self._table
        opened, recycled = self._copied
        self._opened.inc(t.opened_total - opened)
        self._recycled.inc(t.recycled_total - recycled)
        self._copied = (t.opened_total, t.recycled_total)
        self._clients.set(t.api_connections)


class GpuCollector(Collector):
    """Reads NVML at scrape time for the GPUs this process can see."""

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles

    @classmethod
    def create(cls) -> GpuCollector:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise RuntimeError("no GPU")
        return cls(pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        utilization = GaugeMetricFamily(
            GPU_UTILIZATION,
            "GPU busy fraction over the last sample period (NVML).",
            labels=["gpu"],
        )
        memory = GaugeMetricFamily(GPU_MEMORY_USED, "GPU memory in use (NVML).", labels=["gpu"])
        for index, handle in enumerate(self._handles):
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization.add_metric([str(index)], rates.gpu / 100.0)
            memory.add_metric([str(index)], float(info.used))
        yield utilization
        yield memory
