"""What the autoscaler sees of a fleet at one tick: each ready pod's load (rates from counter
deltas, gauges as read, or nothing when unmeasured), the pods that are not ready, and the fleet's
totals for status. Pure data; the policy (policy.py) decides from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PodMetrics:
    """One ready pod's load over the last tick (rates from counter deltas, gauges as read)."""

    requests_per_second: float
    tokens_per_second: float
    engine_utilization: float  # rate of busy seconds, 0..1
    gpu_utilization: float | None  # NVML mean over the pod's GPUs, 0..1; None without a GPU
    queue_tokens: float
    queue_requests: float
    task: str | None = None  # what the worker serves (embed, rerank), as it reports

    @property
    def utilization_percent(self) -> float:
        # The busier of the two views: NVML sees kernels, the engine sees its compute thread.
        gpu = self.gpu_utilization if self.gpu_utilization is not None else 0.0
        return 100.0 * max(gpu, self.engine_utilization)

    @property
    def active(self) -> bool:
        # A long request in compute finishes no request yet but keeps the engine busy.
        return (
            self.requests_per_second > 0
            or self.queue_requests > 0
            or self.queue_tokens > 0
            or self.engine_utilization > 0
        )


@dataclass(frozen=True)
class PodObservation:
    name: str
    metrics: PodMetrics | None  # None: the scrape failed, timed out or has no rate yet


@dataclass(frozen=True)
class Observation:
    current_replicas: int  # the Deployment's spec.replicas
    ready_pods: tuple[PodObservation, ...]  # pods ready in the Service's EndpointSlices
    unready_pods: tuple[str, ...] = ()  # names of the other pods, not terminating
    # What a new pod takes from creation to Ready, measured on this fleet's own pods
    # (starts.py); None until one start has been seen.
    worker_start_seconds: float | None = None

    @property
    def reporting(self) -> list[PodMetrics]:
        return [p.metrics for p in self.ready_pods if p.metrics is not None]

    @property
    def missing(self) -> list[str]:
        return [p.name for p in self.ready_pods if p.metrics is None]

    @property
    def starting(self) -> int:
        return max(0, self.current_replicas - len(self.ready_pods))


@dataclass(frozen=True)
class FleetMetrics:
    """Fleet-wide figures, for status and the operator's own metrics."""

    utilization_percent: float | None
    engine_utilization_percent: float | None
    gpu_utilization_percent: float | None
    requests_per_second: float
    tokens_per_second: float
    queue_tokens: float
    reporting_pods: int
    missing_pods: int
    tasks: tuple[str, ...] = ()  # what the reporting workers serve (two during a change)


def fleet_metrics(observation: Observation) -> FleetMetrics:
    reporting = observation.reporting

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    gpus = [m.gpu_utilization * 100 for m in reporting if m.gpu_utilization is not None]
    return FleetMetrics(
        utilization_percent=mean([m.utilization_percent for m in reporting]),
        engine_utilization_percent=mean([m.engine_utilization * 100 for m in reporting]),
        gpu_utilization_percent=mean(gpus),
        requests_per_second=sum(m.requests_per_second for m in reporting),
        tokens_per_second=sum(m.tokens_per_second for m in reporting),
        queue_tokens=sum(m.queue_tokens for m in reporting),
        reporting_pods=len(reporting),
        missing_pods=len(observation.missing),
        tasks=tuple(sorted({m.task for m in reporting if m.task is not None})),
    )
