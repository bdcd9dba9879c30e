"""Metric names on the operator's side: the worker contract it reads (DESIGN.md's table; a test
keeps these equal to the worker's own names) and the operator's own Prometheus metrics."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# The worker's metrics the observer reads.
WORKER_REQUESTS_TOTAL = "embedfleet_requests_total"
WORKER_INPUT_TOKENS_TOTAL = "embedfleet_input_tokens_total"
WORKER_ENGINE_BUSY = "embedfleet_engine_busy_seconds_total"
WORKER_GPU_UTILIZATION = "embedfleet_gpu_utilization_ratio"
WORKER_QUEUE_TOKENS = "embedfleet_queue_tokens"
WORKER_MODEL_INFO = "embedfleet_model_info"  # its `task` label: what the worker serves
WORKER_QUEUE_REQUESTS = "embedfleet_queue_requests"
PROCESS_START_TIME = "process_start_time_seconds"

# The operator's own.
SCALE_DECISIONS = "embedfleet_operator_scale_decisions_total"
SCALE_EVENTS = "embedfleet_operator_scale_events_total"
SCRAPES = "embedfleet_operator_scrapes_total"
SCRAPE_FAILURES = "embedfleet_operator_scrape_failures_total"
TICK_DURATION = "embedfleet_operator_autoscale_tick_seconds"
TICK_LATENESS = "embedfleet_operator_tick_lateness_seconds"
TICKS_SKIPPED = "embedfleet_operator_ticks_skipped_total"
PROCESS_CPU = "process_cpu_seconds_total"  # the operator's own CPU, for the scale test
DESIRED_REPLICAS = "embedfleet_operator_desired_replicas"
MIN_REPLICAS = "embedfleet_operator_min_replicas"
MAX_REPLICAS = "embedfleet_operator_max_replicas"
FLEET_UTILIZATION = "embedfleet_operator_fleet_utilization_percent"
FLEET_REQUESTS = "embedfleet_operator_fleet_requests_per_second"
# Workers' starts, creation to Ready, from the pods' own timings (starts.py): each pod once.
WORKER_START = "embedfleet_operator_worker_start_seconds"
EXPECTED_WORKER_START = "embedfleet_operator_expected_worker_start_seconds"

_SERVICE = ["namespace", "service"]


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            SCALE_DECISIONS.removesuffix("_total"),
            "Autoscaling decisions by the rule that decided.",
            [*_SERVICE, "reason"],
            registry=r,
        )
        self.scale_events = Counter(
            SCALE_EVENTS.removesuffix("_total"),
            "Replica changes the autoscaler made.",
            [*_SERVICE, "direction"],
            registry=r,
        )
        self.scrapes = Counter(
            SCRAPES.removesuffix("_total"), "Worker /metrics scrapes.", _SERVICE, registry=r
        )
        self.scrape_failures = Counter(
            SCRAPE_FAILURES.removesuffix("_total"),
            "Worker /metrics scrapes that failed or timed out.",
            _SERVICE,
            registry=r,
        )
        self.tick_duration = Histogram(
            TICK_DURATION,
            "Duration of one autoscaling tick (scrape, decide, act).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.tick_lateness = Histogram(
            TICK_LATENESS,
            "How long after its due time an autoscaling tick started.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 30),
            registry=r,
        )
        self.ticks_skipped = Counter(
            TICKS_SKIPPED.removesuffix("_total"),
            "Autoscaling ticks skipped because they were more than a period late.",
            _SERVICE,
            registry=r,
        )
        ProcessCollector(registry=r)
        self.desired = Gauge(
            DESIRED_REPLICAS, "Replicas the autoscaler wants.", _SERVICE, registry=r
        )
        self.min_replicas = Gauge(MIN_REPLICAS, "The spec's minReplicas.", _SERVICE, registry=r)
        self.max_replicas = Gauge(MAX_REPLICAS, "The spec's maxReplicas.", _SERVICE, registry=r)
        self.utilization = Gauge(
            FLEET_UTILIZATION, "Mean utilisation of the reporting workers.", _SERVICE, registry=r
        )
        self.requests = Gauge(
            FLEET_REQUESTS, "Requests per second over the fleet.", _SERVICE, registry=r
        )
        self.worker_starts = Histogram(
            WORKER_START,
            "A worker pod's start, creation to Ready (each pod once, when first seen ready).",
            _SERVICE,
            buckets=(2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800),
            registry=r,
        )
        self.expected_start = Gauge(
            EXPECTED_WORKER_START,
            "The start the autoscaler expects of a new worker: the median of the last 5.",
            _SERVICE,
            registry=r,
        )

    def forget(self, namespace: str, service: str) -> None:
        """Drops a deleted service's series (their label sets would otherwise live forever)."""
        gauges = (
            self.desired,
            self.min_replicas,
            self.max_replicas,
            self.utilization,
            self.requests,
            self.expected_start,
            self.worker_starts,
        )
        for gauge in gauges:
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, service)
