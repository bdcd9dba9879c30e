"""Pure: a worker's Prometheus text to a sample, and two samples of one pod to its rates over
the interval. Counter resets (a restarted process) follow Prometheus' rule: after a reset the
new value is the increase."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from embedfleet_operator.fleet import PodMetrics
from embedfleet_operator.operator_metrics import (
    PROCESS_START_TIME,
    WORKER_ENGINE_BUSY,
    WORKER_GPU_UTILIZATION,
    WORKER_INPUT_TOKENS_TOTAL,
    WORKER_MODEL_INFO,
    WORKER_QUEUE_REQUESTS,
    WORKER_QUEUE_TOKENS,
    WORKER_REQUESTS_TOTAL,
)


@dataclass(frozen=True)
class WorkerSample:
    time: float  # when it was taken (the caller's monotonic clock)
    requests: float  # finished requests, every status code
    tokens: float
    busy_seconds: float
    gpu_utilization: float | None  # mean over the pod's GPUs, 0..1
    queue_tokens: float
    queue_requests: float
    started: float | None  # the process' start time, to spot restarts
    task: str | None = None  # embed or rerank, from its model_info


class MetricsFormatError(ValueError):
    pass


def parse_worker_metrics(text: str, time: float) -> WorkerSample:
    sums: dict[str, float] = {}
    gpus: list[float] = []
    task = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == WORKER_GPU_UTILIZATION:
                    gpus.append(float(sample.value))
                elif sample.name == WORKER_MODEL_INFO:
                    task = sample.labels.get("task") or task
                else:
                    sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    except (ValueError, TypeError, IndexError) as error:
        raise MetricsFormatError(f"unparseable metrics: {error}") from error
    needed = (WORKER_REQUESTS_TOTAL, WORKER_INPUT_TOKENS_TOTAL, WORKER_ENGINE_BUSY)
    absent = [name for name in needed if name not in sums]
    if absent:
        raise MetricsFormatError(f"not an embedfleet worker: no {', '.join(absent)}")
    return WorkerSample(
        time=time,
        requests=sums[WORKER_REQUESTS_TOTAL],
        tokens=sums[WORKER_INPUT_TOKENS_TOTAL],
        busy_seconds=sums[WORKER_ENGINE_BUSY],
        gpu_utilization=sum(gpus) / len(gpus) if gpus else None,
        queue_tokens=sums.get(WORKER_QUEUE_TOKENS, 0.0),
        queue_requests=sums.get(WORKER_QUEUE_REQUESTS, 0.0),
        started=sums.get(PROCESS_START_TIME),
        task=task,
    )


def restarted(previous: WorkerSample, current: WorkerSample) -> bool:
    if previous.started is not None and current.started is not None:
        return abs(current.started - previous.started) > 0.5 or _decreased(previous, current)
    return _decreased(previous, current)


def _decreased(previous: WorkerSample, current: WorkerSample) -> bool:
    return (
        current.requests < previous.requests
        or current.tokens < previous.tokens
        or current.busy_seconds < previous.busy_seconds
    )


def pod_rates(previous: WorkerSample | None, current: WorkerSample) -> PodMetrics | None:
    """Rates over the interval between two scrapes; None until there are two."""
    if previous is None or current.time <= previous.time:
        return None
    elapsed = current.time - previous.time
    reset = restarted(previous, current)

    def rate(before: float, after: float) -> float:
        return max(0.0, after if reset else after - before) / elapsed

    return PodMetrics(
        requests_per_second=rate(previous.requests, current.requests),
        tokens_per_second=rate(previous.tokens, current.tokens),
        engine_utilization=min(1.0, rate(previous.busy_seconds, current.busy_seconds)),
        gpu_utilization=current.gpu_utilization,
        queue_tokens=current.queue_tokens,
        queue_requests=current.queue_requests,
        task=current.task,
    )
