"""Pure status computation per Kubernetes API conventions: conditions Ready, Progressing and
Degraded derived from the owned Deployment and its pods, and the autoscaler's fields and
conditions (ScalingActive, ScalingLimited) from its decision, with `now` passed in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedfleet_operator.policy import Decision, FleetMetrics
from embedfleet_operator.resources import SELECTOR_LABEL, endpoint_url

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
    """New condition list; lastTransitionTime moves only when a condition's status changes.
    Conditions of other types (another writer's, e.g. the autoscaler's) are kept as they are."""
    previous = {c.get("type"): c for c in current}
    ours = {c.type for c in wanted}
    merged = [c for c in current if c.get("type") not in ours]
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


def compute_status(
    service: Manifest,
    deployment: Manifest | None,
    pods: list[Manifest],
    *,
    apply_error: Problem | None,
    now: str,
    load_errors: Mapping[str, str] | None = None,
) -> Manifest:
    current = service.get("status", {}) or {}
    deployment_status = (deployment or {}).get("status", {})
    generation = int(service["metadata"].get("generation", 0))
    conditions = compute_conditions(
        deployment, pods, apply_error=apply_error, load_errors=load_errors
    )
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            current.get("conditions", []) or [], conditions, generation=generation, now=now
        ),
        "replicas": int(deployment_status.get("replicas", 0) or 0),
        "readyReplicas": int(deployment_status.get("readyReplicas", 0) or 0),
        "selector": f"{SELECTOR_LABEL}={service['metadata']['name']}",
        "endpoint": endpoint_url(service),
    }


def status_changes(current: Manifest, wanted: Manifest) -> Manifest:
    """Only the fields that differ: status is written only when something changed."""
    return {key: value for key, value in wanted.items() if current.get(key) != value}


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


def autoscaling_status(
    service: Manifest, decision: Decision | None, *, enabled: bool, scaled: bool, now: str
) -> Manifest:
    """The autoscaler's part of status; `scaled` when this tick changed the replica count."""
    current = service.get("status", {}) or {}
    generation = int(service["metadata"].get("generation", 0))
    conditions = scaling_conditions(decision, enabled=enabled)
    status: Manifest = {
        "conditions": merge_conditions(
            current.get("conditions", []) or [], conditions, generation=generation, now=now
        ),
    }
    if decision is None:
        status["desiredReplicas"] = service["spec"].get("replicas", 1)
        return status
    status["desiredReplicas"] = decision.replicas
    if decision.metrics is not None:
        status["metrics"] = metrics_status(decision.metrics)
    if scaled:
        status["lastScaleTime"] = now
        status["lastScaleReason"] = decision.reason
        status["lastScaleMessage"] = decision.message
    return status
