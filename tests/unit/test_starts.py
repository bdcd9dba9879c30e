"""A worker's start measured from its pod's own timings (starts.py), the estimate the autoscaler
decides with, and how it reaches the activator's Retry-After (demand.py, activation.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector

from embedfleet_operator.activation import HoldLimits, retry_after, with_measured_start
from embedfleet_operator.demand import activator_url
from embedfleet_operator.spec import parse_service
from embedfleet_operator.starts import StartHistory, pod_start_seconds, record_starts
from embedfleet_worker.process_age import process_age_seconds
from tests.unit.operator_fakes import FakeCache, body, ready_pod

Manifest = dict[str, Any]


def pod(
    name: str = "w-1",
    created: str | None = "2026-12-02T10:00:00Z",
    ready: str | None = "True",
    became: str = "2026-12-02T10:00:42Z",
    restarts: int = 0,
    **meta: Any,
) -> Manifest:
    conditions = [] if ready is None else [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-02T10:00:01Z"},
        {"type": "Ready", "status": ready, "lastTransitionTime": became},
    ]  # fmt: skip
    metadata = {"name": name, "uid": f"uid-{name}", **meta}
    if created is not None:
        metadata["creationTimestamp"] = created
    return {
        "metadata": metadata,
        "status": {"conditions": conditions,
                   "containerStatuses": [{"name": "worker", "restartCount": restarts}]},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("case", "manifest", "seconds"),
    [
        ("creation to Ready", pod(), 42.0),
        ("a start of minutes (an image pull)", pod(became="2026-12-02T10:03:05Z"), 185.0),
        ("timestamps with fractions and offsets",
         pod(created="2026-12-02T10:00:00.5+00:00", became="2026-12-02T11:00:10.5+01:00"), 10.0),
        ("not ready yet", pod(ready="False"), None),
        ("no Ready condition at all (Pending)", pod(ready=None), None),
        ("a container restart moved Ready's transition: the first start is lost",
         pod(restarts=1), None),
        ("a pod being deleted", pod(deletionTimestamp="2026-12-02T10:05:00Z"), None),
        ("no creation time", pod(created=None), None),
        ("Ready before creation (a clock gone wrong)", pod(became="2026-12-02T09:59:00Z"), None),
        ("a timestamp that does not parse", pod(became="yesterday"), None),
    ],
)  # fmt: skip
def test_a_pods_start_from_its_own_timings(case: str, manifest: Manifest, seconds: float) -> None:
    assert pod_start_seconds(manifest) == seconds, case


def test_each_pod_is_measured_once_when_first_seen_ready() -> None:
    history, measured = record_starts(StartHistory(), [pod("a", ready="False"), pod("b")])
    assert measured == [42.0]
    assert history.starts == (42.0,)
    # Next tick: a is ready now and measured; b, already measured, is not again.
    history, measured = record_starts(history, [pod("a", became="2026-12-02T10:01:30Z"), pod("b")])
    assert measured == [90.0]
    assert history.starts == (42.0, 90.0)
    assert history.estimate == 66.0
    # A pod seen ready after a restart is looked at, not measured, and not looked at again.
    history, measured = record_starts(history, [pod("c", restarts=2)])
    assert measured == []
    assert history.seen == frozenset({"uid-c"})  # a and b are gone: forgotten
    assert record_starts(history, [pod("c", restarts=2)])[1] == []


def test_the_estimate_is_the_median_of_the_last_five() -> None:
    assert StartHistory().estimate is None
    history = StartHistory()
    for index, seconds in enumerate((600, 60, 70, 65, 300, 80)):
        became = f"2026-12-02T10:{seconds // 60:02d}:{seconds % 60:02d}Z"
        history, _ = record_starts(history, [pod(f"p{index}", became=became)])
    assert history.starts == (60.0, 70.0, 65.0, 300.0, 80.0)  # the 600 s one has aged out
    assert history.estimate == 70.0  # one slow start does not swing it


@pytest.mark.parametrize(
    ("start", "typical"),
    [
        (None, 30),  # no measured start: the configured one
        ("42.4", 43),
        ("0.2", 1),
        ("5000", 1800),  # never beyond the hold bound
        ("-3", 30),
        ("nan", 30),
        ("inf", 30),
        ("soon", 30),
    ],
)
def test_the_activator_takes_the_measured_start_from_the_operators_poll(
    start: str | None, typical: int
) -> None:
    limits = HoldLimits(max_held=10, hold_seconds=1800, retry_after_seconds=30)
    assert with_measured_start(limits, start).retry_after_seconds == typical


def test_retry_after_is_what_remains_of_the_measured_start() -> None:
    limits = with_measured_start(HoldLimits(10, 1800, 30), "90")
    assert retry_after(limits, None) == 90  # no start under way: a whole start
    assert retry_after(limits, 60.5) == 30
    assert retry_after(limits, 200.0) == 1


def test_the_demand_poll_carries_the_measured_start() -> None:
    cache = FakeCache()
    cache.objects[("Deployment", "ml", "emb")] = {"metadata": {"name": "emb"},
                                                  "spec": {"replicas": 0}}  # fmt: skip
    cache.activator_pod_list[("ml", "emb")] = [ready_pod("emb-activator-1", port=8000)]
    service = parse_service(body({"model": {"name": "m"}, "autoscaling": {"minReplicas": 0}}))
    assert activator_url(cache, service) == "http://127.0.0.1:8000/demand?wait=25"
    assert activator_url(cache, service, 61.24) == "http://127.0.0.1:8000/demand?wait=25&start=61.2"


def test_the_workers_process_age_agrees_with_the_process_collectors_start_time() -> None:
    """The worker's own start (embedfleet_worker_start_seconds) is its process's age at Ready,
    from the kernel's start time: the same instant the process collector exports (to the
    second there: the boot time it adds is whole seconds)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    started = registry.get_sample_value("process_start_time_seconds")
    age = process_age_seconds()
    assert started is not None
    assert age is not None
    assert abs((time.time() - started) - age) < 1.5
