"""Pure status computation per Kubernetes API conventions: conditions Ready, Progressing and
Degraded derived from the owned Deployment and its pods, and the autoscaler's fields and
conditions (ScalingActive, ScalingLimited) from its decision, with `now` passed in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedfleet_operator.fleet import FleetMetrics
from embedfleet_operator.policy import Decision
from embedfleet_operator.resources import endpoint_url, label_selector
from embedfleet_operator.spec import EmbeddingService

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


def merge_conditions(
    current: list[Manifest], wanted: list[Condition], *, generation: int, now: str
) -> list[Manifest]:
    """A writer's own conditions as written; lastTransitionTime moves only when a condition's
    status changes. Other writers' conditions are theirs: status is applied per writer, and
    the CRD's conditions are a map keyed by type, so entries merge one by one."""
    previous = {c.get("type"): c for c in current}
    merged = []
    for condition in wanted:
        before = previous.get(condition.type, {})
        changed = before.get("status") != condition.status
        merged.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": now if changed else before.get("lastTransitionTime", now),
                "observedGeneration": generation,
            }
        )
    return merged


def is_written(current: Manifest, part: Manifest) -> bool:
    """Whether `current` status already holds a writer's `part` (then nothing is sent)."""
    for key, value in part.items():
        if key == "conditions":
            held = {c.get("type"): c for c in current.get("conditions") or []}
            if any(held.get(c["type"]) != c for c in value):
                return False
        elif current.get(key) != value:
            return False
    return True


@dataclass(frozen=True)
class Problem:
    """Why the fleet is not as specified: a reason in one word for `kubectl get` (the
    kubelet's own where it has one: Unschedulable, ImagePullBackOff, ...) and the message."""

    reason: str
    message: str


def pod_problem(pods: list[Manifest]) -> Problem | None:
    """Why workers are not ready, read off the pods, in the words `kubectl describe pod` uses."""
    for pod in pods:
        name = pod["metadata"]["name"]
        for condition in pod.get("status", {}).get("conditions", []) or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                reason = condition.get("message", "")
                return Problem("Unschedulable", f"pod {name} cannot be scheduled: {reason}")
        for status in pod.get("status", {}).get("containerStatuses", []) or []:
            waiting = (status.get("state") or {}).get("waiting")
            ended = (status.get("lastState") or {}).get("terminated") or {}
            if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
                detail = f"{waiting['reason']} {waiting.get('message', '')}".strip()
                # A crash loop of OOM kills is a memory limit to raise, not a crash to debug.
                reason = "OOMKilled" if ended.get("reason") == "OOMKilled" else waiting["reason"]
                return Problem(reason, f"pod {name}: {detail}{_last_exit(status)}")
            if not status.get("ready") and ended.get("reason") == "OOMKilled":
                # A kubelet restarts a first crash at once: running again, not ready, and
                # only lastState says what happened.
                return Problem("OOMKilled", f"pod {name} restarted{_last_exit(status)}")
    return None


def _last_exit(container: Manifest) -> str:
    """Why a restarting container last stopped (OOMKilled, a crash's exit code and message):
    CrashLoopBackOff alone does not say."""
    ended = (container.get("lastState") or {}).get("terminated")
    if not ended:
        return ""
    detail = f"{ended.get('reason', 'Error')}, exit code {ended.get('exitCode', '?')}"
    message = (ended.get("message") or "").strip()
    return f"; last exit: {detail}" + (f": {message[-300:]}" if message else "")


def replica_problem(deployment: Manifest) -> Problem | None:
    """The Deployment's ReplicaFailure: its pods could not even be created (a PriorityClass
    that does not exist, a ResourceQuota exceeded), so no pod says why; the controller does."""
    for condition in deployment.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            reason = condition.get("reason") or "ReplicaFailure"
            return Problem(reason, f"workers cannot be created: {condition.get('message', '')}")
    return None


def load_problem(load_errors: Mapping[str, str]) -> Problem | None:
    """A worker's own account of why it could not load its model (its /health), if any."""
    if not load_errors:
        return None
    pod = min(load_errors)
    return Problem("ModelLoadFailed", f"pod {pod} cannot load the model: {load_errors[pod]}")


def compute_conditions(
    deployment: Manifest | None,
    pods: list[Manifest],
    *,
    apply_error: Problem | None,
    load_errors: Mapping[str, str] | None = None,
) -> list[Condition]:
    if apply_error is not None:
        reason, message = apply_error.reason, apply_error.message
        return [
            Condition("Ready", "False", reason, message),
            Condition("Progressing", "False", "ReconcileFailed", message),
            Condition("Degraded", "True", reason, message),
        ]
    if deployment is None:
        waiting = "the worker Deployment does not exist yet"
        return [
            Condition("Ready", "False", "Creating", waiting),
            Condition("Progressing", "True", "Creating", waiting),
            Condition("Degraded", "False", "AsExpected", ""),
        ]
    status = deployment.get("status", {})
    desired = int(deployment.get("spec", {}).get("replicas", 0) or 0)
    ready = int(status.get("readyReplicas", 0) or 0)
    updated = int(status.get("updatedReplicas", 0) or 0)
    rolled_out = (
        status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and updated >= desired
        and int(status.get("replicas", 0) or 0) == desired
    )
    unready = ready < desired
    # The worker's own account first: it knows why its model did not load.
    problem = (
        (load_problem(load_errors or {}) or pod_problem(pods) or replica_problem(deployment))
        if unready
        else None
    )
    if desired == 0:
        readiness = Condition("Ready", "False", "ScaledToZero", "no workers are running")
    elif ready >= 1:
        readiness = Condition("Ready", "True", "WorkersReady", f"{ready}/{desired} workers ready")
    elif problem:
        readiness = Condition("Ready", "False", problem.reason, problem.message)
    else:
        waiting = f"0/{desired} workers ready; the model may still be loading"
        readiness = Condition("Ready", "False", "WorkersStarting", waiting)
    progressing = (
        Condition("Progressing", "False", "RolledOut", "all workers run the current spec")
        if rolled_out
        else Condition("Progressing", "True", "RollingOut", f"{updated}/{desired} workers updated")
    )
    degraded = (
        Condition("Degraded", "True", problem.reason, problem.message)
        if problem
        else Condition("Degraded", "False", "AsExpected", "")
    )
    return [readiness, progressing, degraded]


def held_conditions(
    conditions: list[Condition], held: Problem, *, workers: bool
) -> list[Condition]:
    """Workers held back until the model is in the cache (prefetch.py): Progressing says
    Prefetching, or PrefetchFailed with Degraded; Ready too while no worker Deployment runs
    (with one, running an earlier revision, Ready stays the workers')."""
    failed = held.reason == "PrefetchFailed"
    by_type = {c.type: c for c in conditions}
    if not workers:
        by_type["Ready"] = Condition("Ready", "False", held.reason, held.message)
    by_type["Progressing"] = Condition("Progressing", str(not failed), held.reason, held.message)
    if failed:
        by_type["Degraded"] = Condition("Degraded", "True", held.reason, held.message)
    return [by_type[c.type] for c in conditions]


def compute_status(
    service: EmbeddingService,
    deployment: Manifest | None,
    pods: list[Manifest],
    *,
    apply_error: Problem | None,
    now: str,
    load_errors: Mapping[str, str] | None = None,
    held: Problem | None = None,
    prefetch: Manifest | None = None,
) -> Manifest:
    """`held`: why workers wait (prefetch.hold_problem); `prefetch`: status.prefetch."""
    current = service.status
    deployment_status = (deployment or {}).get("status", {})
    generation = service.generation
    conditions = compute_conditions(
        deployment, pods, apply_error=apply_error, load_errors=load_errors
    )
    if held is not None and apply_error is None:
        conditions = held_conditions(conditions, held, workers=deployment is not None)
    extra = {"prefetch": prefetch} if prefetch is not None else {}
    return {
        **extra,
        "observedGeneration": generation,
        "conditions": merge_conditions(
            current.get("conditions", []) or [], conditions, generation=generation, now=now
        ),
        "replicas": int(deployment_status.get("replicas", 0) or 0),
        "readyReplicas": int(deployment_status.get("readyReplicas", 0) or 0),
        "selector": label_selector(service.name),
        "endpoint": endpoint_url(service),
    }


def invalid_status(current: Manifest, generation: int, problem: Problem, *, now: str) -> Manifest:
    """The reconciler's part of status for a spec it cannot use at all."""
    conditions = compute_conditions(None, [], apply_error=problem)
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            current.get("conditions", []) or [], conditions, generation=generation, now=now
        ),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def metrics_status(metrics: FleetMetrics) -> Manifest:
    values = {
        "utilizationPercent": _rounded(metrics.utilization_percent),
        "gpuUtilizationPercent": _rounded(metrics.gpu_utilization_percent),
        "engineUtilizationPercent": _rounded(metrics.engine_utilization_percent),
        "requestsPerSecond": _rounded(metrics.requests_per_second),
        "tokensPerSecond": _rounded(metrics.tokens_per_second),
        "queueTokens": _rounded(metrics.queue_tokens),
        "reportingWorkers": metrics.reporting_pods,
        "unmeasuredWorkers": metrics.missing_pods,
        "task": ",".join(metrics.tasks) or None,
    }
    return {key: value for key, value in values.items() if value is not None}


def scaling_conditions(decision: Decision | None, *, enabled: bool) -> list[Condition]:
    if not enabled or decision is None:
        off = "autoscaling is disabled; spec.replicas decides"
        return [
            Condition("ScalingActive", "False", "AutoscalingDisabled", off),
            Condition("ScalingLimited", "False", "AutoscalingDisabled", off),
        ]
    measured = decision.metrics is not None and decision.metrics.reporting_pods > 0
    active = (
        Condition(
            "ScalingActive", "True", "ValidMetricsFound", f"{decision.reason}: {decision.message}"
        )
        if measured
        else Condition("ScalingActive", "False", "MetricsMissing", decision.message)
    )
    limited = (
        Condition("ScalingLimited", "True", "AtReplicaBound", decision.message)
        if decision.limited
        else Condition("ScalingLimited", "False", "InRange", "between minReplicas and maxReplicas")
    )
    return [active, limited]


LATE_SHARE = 0.2  # a tick that starts later than this share of its period is late


def schedule_condition(late: float, skipped: int, period: float) -> Condition:
    """Whether the autoscaler keeps its period: a late or skipped tick means the operator is
    short of CPU or API time, and the fleet reacts that much later."""
    if skipped or late > LATE_SHARE * period:
        message = f"this tick started {late:.1f}s late (period {period:g}s)" + (
            f"; {skipped} skipped before it" if skipped else ""
        )
        return Condition("ScalingOnSchedule", "False", "TicksLate", message)
    return Condition(
        "ScalingOnSchedule", "True", "OnSchedule",
        f"ticks start within {LATE_SHARE:.0%} of the {period:g}s period",
    )  # fmt: skip


def autoscaling_status(
    service: EmbeddingService,
    decision: Decision | None,
    *,
    enabled: bool,
    scaled: bool,
    now: str,
    schedule: Condition | None = None,
    worker_start_seconds: float | None = None,
) -> Manifest:
    """The autoscaler's part of status; `scaled` when this tick changed the replica count,
    `worker_start_seconds` the measured start its decisions used (None: none measured yet)."""
    current = service.status
    generation = service.generation
    conditions = scaling_conditions(decision, enabled=enabled)
    if schedule is not None:
        conditions.append(schedule)
    status: Manifest = {
        "conditions": merge_conditions(
            current.get("conditions", []) or [], conditions, generation=generation, now=now
        ),
    }
    if decision is None:
        status["desiredReplicas"] = service.spec.replicas_when_fixed
        return status
    status["desiredReplicas"] = decision.replicas
    # Applied as a whole each time: what this tick does not renew (the last scale, metrics
    # when no worker reported) is carried over, or the apply would remove it.
    last = {key: current[key] for key in _LAST_SCALE if key in current}
    if scaled:
        last = {
            "lastScaleTime": now,
            "lastScaleReason": decision.reason,
            "lastScaleMessage": decision.message,
        }
    status.update(last)
    if decision.metrics is not None:
        status["metrics"] = metrics_status(decision.metrics)
    elif current.get("metrics"):
        status["metrics"] = current["metrics"]
    if worker_start_seconds is not None:
        status["workerStartSeconds"] = round(worker_start_seconds, 1)
    elif "workerStartSeconds" in current:  # an operator restart measures again; keep it so
        status["workerStartSeconds"] = current["workerStartSeconds"]
    return status


_LAST_SCALE = ("lastScaleTime", "lastScaleReason", "lastScaleMessage")
