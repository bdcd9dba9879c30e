"""The operator as a process on the real local control plane: an EmbeddingService becomes a
Deployment, Service and PDB whose kwok pods run Ready; status, printer columns, drift
correction, rollouts and garbage collection."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from tests.cluster.controlplane import LocalCluster
from tests.cluster.processes import wait_until
from tests.operator.operator_process import (
    SAMPLE,
    OperatorProcess,
    create_peering,
    install_crds,
    service_warnings,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def operator(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    install_crds(cluster)
    create_peering(cluster, namespace)
    process = OperatorProcess(
        cluster, namespace, tmp_path / "operator.log", "--resync-seconds", "3"
    )
    yield process
    exit_code = process.stop()
    assert exit_code == 0 or process.killed
    assert "Traceback" not in process.log(), process.log()[-4000:]


def apis(cluster: LocalCluster) -> tuple[Any, Any, Any, Any]:
    client = cluster.api_client()
    return (
        kubernetes.client.CustomObjectsApi(client),
        kubernetes.client.AppsV1Api(client),
        kubernetes.client.CoreV1Api(client),
        kubernetes.client.PolicyV1Api(client),
    )


def read(custom: Any, namespace: str, name: str = "qwen3-4b") -> dict[str, Any]:
    result: dict[str, Any] = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return result


def condition(service: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in service.get("status", {}).get("conditions", []):
        if item["type"] == kind:
            return dict(item)
    return {}


def test_sample_becomes_a_ready_fleet_with_status_and_columns(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    custom, apps, core, policy = apis(cluster)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, SAMPLE)

    def ready() -> bool:
        return condition(read(custom, namespace), "Ready").get("status") == "True"

    wait_until(ready, 90, "Ready=True on the EmbeddingService")
    service = read(custom, namespace)
    assert service["status"]["readyReplicas"] == 1
    assert service["status"]["endpoint"] == f"http://qwen3-4b.{namespace}.svc:8000/v1"
    assert condition(service, "Ready")["observedGeneration"] == service["metadata"]["generation"]
    deployment = apps.read_namespaced_deployment("qwen3-4b", namespace)
    assert deployment.spec.replicas == 1
    limits = deployment.spec.template.spec.containers[0].resources.limits
    assert limits["nvidia.com/gpu"] == "1"
    assert core.read_namespaced_service("qwen3-4b", namespace).spec.ports[0].port == 8000
    assert (
        policy.read_namespaced_pod_disruption_budget("qwen3-4b", namespace).spec.max_unavailable
        == 1
    )

    events = core.list_namespaced_event(
        namespace, field_selector="involvedObject.kind=EmbeddingService"
    ).items
    assert any(e.reason == "WorkersReady" for e in events), [e.reason for e in events]

    kubectl = cluster.bin_dir / "kubectl"
    table = subprocess.run(
        [str(kubectl), "--kubeconfig", str(cluster.admin_kubeconfig), "-n", namespace,
         "get", "embsvc"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    header, row = table.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "MODEL",
        "READY",
        "REPLICAS",
        "DESIRED",
        "UTIL%",
        "RPS",
        "AGE",
    ]
    assert row.split()[:4] == ["qwen3-4b", "Qwen/Qwen3-Embedding-4B", "True", "1"]


def test_spec_changes_roll_and_drift_is_reverted(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    custom, apps, _, _ = apis(cluster)
    body = copy.deepcopy(SAMPLE)
    body["spec"]["autoscaling"] = {"enabled": False}
    body["spec"]["replicas"] = 2
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    wait_until(
        lambda: apps.read_namespaced_deployment("qwen3-4b", namespace).spec.replicas == 2,
        60, "spec.replicas applied",
    )  # fmt: skip

    # A new image rolls the Deployment (a new template generation).
    generation = apps.read_namespaced_deployment("qwen3-4b", namespace).metadata.generation
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "qwen3-4b",
        {"spec": {"image": "registry.local/embedfleet-worker:2"}},
    )  # fmt: skip

    def image() -> str:
        deployment = apps.read_namespaced_deployment("qwen3-4b", namespace)
        return str(deployment.spec.template.spec.containers[0].image)

    wait_until(lambda: image() == "registry.local/embedfleet-worker:2", 60, "the new image")
    assert apps.read_namespaced_deployment("qwen3-4b", namespace).metadata.generation > generation

    # Hand edits are put back: the container image and, with autoscaling off, the replicas.
    apps.patch_namespaced_deployment(
        "qwen3-4b", namespace,
        {"spec": {"replicas": 5, "template": {"spec": {"containers": [
            {"name": "worker", "image": "evil/image:latest"}]}}}},
    )  # fmt: skip
    wait_until(lambda: image() == "registry.local/embedfleet-worker:2", 60, "image drift reverted")
    wait_until(
        lambda: apps.read_namespaced_deployment("qwen3-4b", namespace).spec.replicas == 2,
        60, "replica drift reverted",
    )  # fmt: skip


def test_deleting_the_service_removes_what_it_owned(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    custom, apps, core, _ = apis(cluster)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, SAMPLE)
    wait_until(lambda: apps.read_namespaced_deployment("qwen3-4b", namespace), 60, "Deployment")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "qwen3-4b")

    def gone() -> bool:
        deployments = apps.list_namespaced_deployment(namespace).items
        services = core.list_namespaced_service(namespace).items
        pods = core.list_namespaced_pod(namespace).items
        return not deployments and not services and not pods

    wait_until(gone, 90, "garbage collection of the owned objects")


def test_workers_that_cannot_be_scheduled_show_why(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    custom, _, _, _ = apis(cluster)
    body = copy.deepcopy(SAMPLE)
    body["spec"]["resources"] = {"gpus": 16, "memory": "32Gi", "cpu": "4"}  # nodes have 8
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def explained() -> bool:
        ready = condition(read(custom, namespace), "Ready")
        return ready.get("reason") == "Unschedulable"

    wait_until(explained, 90, "Ready=False with the scheduling reason")
    service = read(custom, namespace)
    ready = condition(service, "Ready")
    assert ready["status"] == "False"
    assert "cannot be scheduled" in ready["message"]
    assert "nvidia.com/gpu" in ready["message"]
    assert condition(service, "Degraded")["status"] == "True"

    def warned() -> list[Any]:
        return service_warnings(cluster, namespace, "Unschedulable")

    wait_until(warned, 30, "a Warning event for the degraded fleet")
    assert "cannot be scheduled" in warned()[0].message


def test_two_operators_never_both_act_and_a_killed_one_converges(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    custom, apps, _, _ = apis(cluster)
    peering = kubernetes.client.CustomObjectsApi(cluster.api_client())

    def registered(priority: int) -> bool:
        record = peering.get_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", "embedfleet"
        )
        return any(p.get("priority") == priority for p in (record.get("status") or {}).values())

    # The main operator is in the peering before the standby starts (before that, the
    # standby would rightly be the only one, hence active).
    wait_until(lambda: registered(0), 120, "the main operator to join the peering")
    standby = OperatorProcess(cluster, namespace, tmp_path / "standby.log", "--priority", "-10")
    try:
        # Both operators are in the peering; kopf starts paused and only the highest priority
        # resumes, so the standby must never log that it resumed while the main one lives.
        wait_until(lambda: registered(-10), 120, "the lower-priority operator to join the peering")
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, SAMPLE)
        wait_until(
            lambda: condition(read(custom, namespace), "Ready").get("status") == "True",
            90, "Ready=True",
        )  # fmt: skip
        assert "Resuming operations" not in standby.log()  # it never acted
        # The active operator dies mid-flight; the standby takes over and converges.
        operator.kill()
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "qwen3-4b",
            {"spec": {"image": "registry.local/embedfleet-worker:3"}},
        )  # fmt: skip

        def converged() -> bool:
            deployment = apps.read_namespaced_deployment("qwen3-4b", namespace)
            return bool(
                deployment.spec.template.spec.containers[0].image
                == "registry.local/embedfleet-worker:3"
            )

        wait_until(converged, 120, "the standby operator to take over")
        assert "Resuming operations" in standby.log()
        assert len(apps.list_namespaced_deployment(namespace).items) == 1
    finally:
        assert standby.stop() == 0


def test_a_spec_the_apiserver_refuses_for_the_workers_sets_degraded(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    custom, _, _, _ = apis(cluster)
    body = copy.deepcopy(SAMPLE)
    body["spec"]["podLabels"] = {"team": "not a valid label value!"}  # CRD allows any string
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def degraded() -> bool:
        return condition(read(custom, namespace), "Degraded").get("status") == "True"

    wait_until(degraded, 60, "Degraded=True")
    service = read(custom, namespace)
    assert condition(service, "Degraded")["reason"] == "InvalidSpec"
    assert "refused" in condition(service, "Degraded")["message"]
    assert condition(service, "Ready")["status"] == "False"
