"""Table-driven tests of the pure status computation."""

from __future__ import annotations

from typing import Any

import pytest

from embedfleet_operator.status import (
    Condition,
    compute_conditions,
    merge_conditions,
    status_changes,
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
         {"Ready": ("False", "WorkersNotReady"), "Degraded": ("True", "WorkersFailing")}),
        (deployment(1, 0, 1), [CRASHING], None, {"Ready": ("False", "WorkersNotReady")}),
        (deployment(0, 0, 0), [], None, {"Ready": ("False", "ScaledToZero")}),
        (None, [], "refused",
         {"Ready": ("False", "ReconcileFailed"), "Degraded": ("True", "InvalidSpec")}),
    ],
)  # fmt: skip
def test_compute_conditions(
    deploy: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    error: str | None,
    expected: dict[str, tuple[str, str]],
) -> None:
    conditions = {
        c.type: (c.status, c.reason) for c in compute_conditions(deploy, pods, apply_error=error)
    }
    for kind, value in expected.items():
        assert conditions[kind] == value


def test_unschedulable_message_names_the_cause() -> None:
    [ready, *_] = compute_conditions(deployment(1, 0, 1), [UNSCHEDULABLE], apply_error=None)
    assert "Insufficient nvidia.com/gpu" in ready.message


def test_transition_time_moves_only_when_status_changes() -> None:
    first = merge_conditions([], [Condition("Ready", "False", "A", "")], generation=1, now="t1")
    same = merge_conditions(first, [Condition("Ready", "False", "B", "x")], generation=2, now="t2")
    flipped = merge_conditions(same, [Condition("Ready", "True", "C", "")], generation=2, now="t3")
    assert [c["lastTransitionTime"] for c in (*first, *same, *flipped)] == ["t1", "t1", "t3"]
    assert same[0]["observedGeneration"] == 2


def test_status_changes_keeps_only_differences() -> None:
    assert status_changes({"replicas": 1, "endpoint": "e"}, {"replicas": 1, "endpoint": "f"}) == {
        "endpoint": "f"
    }
    assert status_changes({"replicas": 1}, {"replicas": 1}) == {}
