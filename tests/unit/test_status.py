"""Table-driven tests of the pure status computation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from embedfleet_operator.fleet import FleetMetrics
from embedfleet_operator.policy import Decision
from embedfleet_operator.spec import parse_service
from embedfleet_operator.status import (
    Condition,
    Problem,
    autoscaling_status,
    compute_conditions,
    is_written,
    merge_conditions,
    metrics_status,
    pod_problem,
    schedule_condition,
)


def deployment(replicas: int, ready: int, updated: int, generation: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


NO_GPU = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
UNSCHEDULABLE = {
    "metadata": {"name": "w-1"},
    "status": {"conditions": [{"type": "PodScheduled", "status": "False", "message": NO_GPU}]},
}
CRASHING = {
    "metadata": {"name": "w-2"},
    "status": {"containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]},
}


def crash_looping(last: dict[str, Any]) -> dict[str, Any]:
    container = {"state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                 "lastState": {"terminated": last}}  # fmt: skip
    return {"metadata": {"name": "w-3"}, "status": {"containerStatuses": [container]}}


def replica_failure(deploy: dict[str, Any]) -> dict[str, Any]:
    message = 'pods "w-" is forbidden: no PriorityClass with name gold was found'
    failure = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
               "message": message}  # fmt: skip
    deploy["status"]["conditions"] = [failure]
    return deploy


def pull_refused(name: str) -> dict[str, Any]:
    waiting = {"reason": "ImagePullBackOff", "message": "no such image"}
    container = {"state": {"waiting": waiting}}
    return {"metadata": {"name": name}, "status": {"containerStatuses": [container]}}


@pytest.mark.parametrize(
    ("deploy", "pods", "error", "expected"),
    [
        (None, [], None, {"Ready": ("False", "Creating"), "Progressing": ("True", "Creating")}),
        (deployment(2, 2, 2), [], None,
         {"Ready": ("True", "WorkersReady"), "Progressing": ("False", "RolledOut"),
          "Degraded": ("False", "AsExpected")}),
        (deployment(2, 1, 1), [], None,
         {"Ready": ("True", "WorkersReady"), "Progressing": ("True", "RollingOut")}),
        (deployment(1, 0, 1), [], None, {"Ready": ("False", "WorkersStarting")}),
        (deployment(1, 0, 1), [UNSCHEDULABLE], None,
         {"Ready": ("False", "Unschedulable"), "Degraded": ("True", "Unschedulable")}),
        (deployment(1, 0, 1), [CRASHING], None,
         {"Ready": ("False", "CrashLoopBackOff"), "Degraded": ("True", "CrashLoopBackOff")}),
        (deployment(1, 0, 1), [crash_looping({"reason": "OOMKilled", "exitCode": 137})], None,
         {"Ready": ("False", "OOMKilled"), "Degraded": ("True", "OOMKilled")}),
        (deployment(1, 0, 1), [pull_refused("w-4")], None,
         {"Ready": ("False", "ImagePullBackOff"), "Degraded": ("True", "ImagePullBackOff")}),
        (deployment(2, 1, 2), [pull_refused("w-4")], None,
         {"Ready": ("True", "WorkersReady"), "Degraded": ("True", "ImagePullBackOff")}),
        (deployment(0, 0, 0), [], None, {"Ready": ("False", "ScaledToZero")}),
        (replica_failure(deployment(2, 0, 0)), [], None,
         {"Ready": ("False", "FailedCreate"), "Degraded": ("True", "FailedCreate")}),
        (None, [], Problem("InvalidSpec", "refused"),
         {"Ready": ("False", "InvalidSpec"), "Progressing": ("False", "ReconcileFailed"),
          "Degraded": ("True", "InvalidSpec")}),
    ],
)  # fmt: skip
def test_compute_conditions(
    deploy: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    error: Problem | None,
    expected: dict[str, tuple[str, str]],
) -> None:
    conditions = {
        c.type: (c.status, c.reason) for c in compute_conditions(deploy, pods, apply_error=error)
    }
    for kind, value in expected.items():
        assert conditions[kind] == value


@pytest.mark.parametrize(
    ("pod", "says"),
    [
        (UNSCHEDULABLE, ("Unschedulable", "pod w-1 cannot be scheduled: " + NO_GPU)),
        (CRASHING, ("CrashLoopBackOff", "pod w-2: CrashLoopBackOff")),
        (crash_looping({"reason": "OOMKilled", "exitCode": 137}),
         ("OOMKilled",
          "pod w-3: CrashLoopBackOff back-off 40s; last exit: OOMKilled, exit code 137")),
        (crash_looping({"reason": "Error", "exitCode": 1, "message": "model not found\n"}),
         ("CrashLoopBackOff",
          "pod w-3: CrashLoopBackOff back-off 40s; last exit: Error, exit code 1: "
          "model not found")),
        (pull_refused("w-4"), ("ImagePullBackOff", "pod w-4: ImagePullBackOff no such image")),
        ({"metadata": {"name": "w-6"}, "status": {"containerStatuses": [
            {"ready": False, "state": {"running": {}},
             "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}},
         ("OOMKilled", "pod w-6 restarted; last exit: OOMKilled, exit code 137")),
        ({"metadata": {"name": "w-7"}, "status": {"containerStatuses": [
            {"ready": True, "state": {"running": {}},
             "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}}, None),
        ({"metadata": {"name": "w-5"}, "status": {"containerStatuses": [
            {"state": {"waiting": {"reason": "ContainerCreating"}}}]}}, None),
    ],
)  # fmt: skip
def test_pod_problem_says_why(pod: dict[str, Any], says: tuple[str, str] | None) -> None:
    problem = pod_problem([pod])
    assert (problem and (problem.reason, problem.message)) == says


def test_a_model_that_cannot_load_is_named_with_the_workers_error() -> None:
    error = "OSError: /models/nope is not a model folder or a hub id"
    ready, _, degraded = compute_conditions(
        deployment(1, 0, 1), [CRASHING], apply_error=None, load_errors={"w-9": error}
    )
    assert (ready.status, ready.reason, degraded.status, degraded.reason) == (
        "False", "ModelLoadFailed", "True", "ModelLoadFailed",
    )  # fmt: skip
    assert ready.message == degraded.message == f"pod w-9 cannot load the model: {error}"
    ready, _, degraded = compute_conditions(  # ready workers: a failed one is not the story
        deployment(1, 1, 1), [], apply_error=None, load_errors={"w-9": error}
    )
    assert (ready.reason, degraded.status) == ("WorkersReady", "False")


def test_unschedulable_message_names_the_cause() -> None:
    [ready, *_] = compute_conditions(deployment(1, 0, 1), [UNSCHEDULABLE], apply_error=None)
    assert "Insufficient nvidia.com/gpu" in ready.message


def test_transition_time_moves_only_when_status_changes() -> None:
    first = merge_conditions([], [Condition("Ready", "False", "A", "")], generation=1, now="t1")
    same = merge_conditions(first, [Condition("Ready", "False", "B", "x")], generation=2, now="t2")
    flipped = merge_conditions(same, [Condition("Ready", "True", "C", "")], generation=2, now="t3")
    assert [c["lastTransitionTime"] for c in (*first, *same, *flipped)] == ["t1", "t1", "t3"]
    assert same[0]["observedGeneration"] == 2


def test_a_writers_part_is_written_only_when_it_differs() -> None:
    current = {
        "replicas": 1,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "WorkersReady"},
            {"type": "ScalingActive", "status": "True", "reason": "ValidMetricsFound"},
        ],
    }
    ours = {"replicas": 1, "conditions": [current["conditions"][0]]}
    assert is_written(current, ours)  # another writer's condition is not ours to compare
    assert not is_written(current, {**ours, "replicas": 2})
    flipped = {**current["conditions"][0], "status": "False"}
    assert not is_written(current, {"conditions": [flipped]})
    assert not is_written({}, {"conditions": [flipped]})


@pytest.mark.parametrize(
    ("late", "skipped", "status", "says"),
    [(0.0, 0, "True", "within 20%"), (2.9, 0, "True", "within"), (3.1, 0, "False", "3.1s late"),
     (0.5, 2, "False", "2 skipped")],
)  # fmt: skip
def test_a_late_or_skipped_tick_is_a_condition(
    late: float, skipped: int, status: str, says: str
) -> None:
    condition = schedule_condition(late, skipped, 15.0)
    assert (condition.type, condition.status) == ("ScalingOnSchedule", status)
    assert says in condition.message


METRICS = FleetMetrics(
    utilization_percent=71.234, engine_utilization_percent=71.234, gpu_utilization_percent=None,
    requests_per_second=12.5, tokens_per_second=900.0, queue_tokens=0.0, reporting_pods=2,
    missing_pods=0,
)  # fmt: skip


def test_metrics_status_says_what_the_workers_serve() -> None:
    assert "task" not in metrics_status(METRICS)  # no worker reported one
    assert metrics_status(replace(METRICS, tasks=("rerank",)))["task"] == "rerank"
    assert metrics_status(replace(METRICS, tasks=("embed", "rerank")))["task"] == "embed,rerank"


SERVICE = parse_service(
    {
        "metadata": {"name": "s", "namespace": "ml", "generation": 3},
        "spec": {"model": {"name": "m"}, "replicas": 2},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "WorkersReady"}],
            "lastScaleTime": "earlier",
            "lastScaleReason": "Before",
            "lastScaleMessage": "m0",
        },
    }
)


@pytest.mark.parametrize(
    ("decision", "enabled", "scaled", "active", "limited", "scale_fields"),
    [
        (Decision(3, "UtilizationAboveTarget", "m", 3, metrics=METRICS), True, True,
         ("True", "ValidMetricsFound"), ("False", "InRange"), True),
        (Decision(4, "UtilizationAboveTarget", "m", 6, limited=True, metrics=METRICS), True,
         False, ("True", "ValidMetricsFound"), ("True", "AtReplicaBound"), False),
        (Decision(2, "MetricsMissing", "m", 2, metrics=replace(METRICS, reporting_pods=0)),
         True, False, ("False", "MetricsMissing"), ("False", "InRange"), False),
        (None, False, False, ("False", "AutoscalingDisabled"), ("False", "AutoscalingDisabled"),
         False),
    ],
    ids=["scaled", "at-max", "unmeasured", "disabled"],
)  # fmt: skip
def test_autoscaling_status(
    decision: Decision | None,
    enabled: bool,
    scaled: bool,
    active: tuple[str, str],
    limited: tuple[str, str],
    scale_fields: bool,
) -> None:
    status = autoscaling_status(SERVICE, decision, enabled=enabled, scaled=scaled, now="t")
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["ScalingActive"] == active
    assert conditions["ScalingLimited"] == limited
    assert "Ready" not in conditions  # the reconciler's condition: not the autoscaler's to write
    assert status["desiredReplicas"] == (decision.replicas if decision else 2)
    if decision is not None:
        # Applied whole: the last scale is renewed when this tick scaled, else carried over.
        assert status["lastScaleTime"] == ("t" if scale_fields else "earlier")
    if decision is not None:
        assert status["metrics"]["utilizationPercent"] == 71.23
        assert "gpuUtilizationPercent" not in status["metrics"]  # no GPU: absent, not zero


def test_the_measured_worker_start_is_written_rounded_and_kept_across_a_restart() -> None:
    decision = Decision(3, "UtilizationAboveTarget", "m", 3, metrics=METRICS)
    status = autoscaling_status(
        SERVICE, decision, enabled=True, scaled=False, now="t", worker_start_seconds=84.56
    )
    assert status["workerStartSeconds"] == 84.6
    assert "workerStartSeconds" not in autoscaling_status(
        SERVICE, decision, enabled=True, scaled=False, now="t"
    )  # none measured yet, none written before
    # A restarted operator has measured nothing yet: what status held is carried over.
    written = replace(SERVICE, status={**SERVICE.status, "workerStartSeconds": 84.6})
    kept = autoscaling_status(written, decision, enabled=True, scaled=False, now="t")
    assert kept["workerStartSeconds"] == 84.6
