"""The operator as a process on the real local control plane: an EmbeddingService becomes a
Deployment, Service and PDB whose kwok pods run Ready; status, printer columns, drift
correction, rollouts and garbage collection."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from tests.cluster.controlplane import LocalCluster
from tests.cluster.processes import free_loopback_port, wait_until
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

    table = cluster.kubectl("-n", namespace, "get", "embsvc")
    header, row = table.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "MODEL",
        "READY",
        "REASON",
        "DEGRADED",
        "REPLICAS",
        "DESIRED",
        "UTIL%",
        "RPS",
        "AGE",
    ]
    assert row.split()[:6] == [
        "qwen3-4b", "Qwen/Qwen3-Embedding-4B", "True", "WorkersReady", "AsExpected", "1",
    ]  # fmt: skip


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

    created = time.monotonic()
    wait_until(explained, 2 * DEFAULT_RESYNC_S, "Ready=False with the scheduling reason")
    within_a_resync("Unschedulable", time.monotonic() - created)
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


DEFAULT_RESYNC_S = 30.0  # the operator's default: a failure shows in status within one


def within_a_resync(reason: str, took: float) -> None:
    print(f"{reason} in status {took:.1f}s after create")
    assert took <= DEFAULT_RESYNC_S, (
        f"{reason} in status {took:.1f}s after create, target one resync ({DEFAULT_RESYNC_S:g}s)"
    )


def deployment_applies(cluster: LocalCluster, code: int) -> float:
    """Server-side applies of Deployments the apiserver answered with `code`, from its metrics."""
    exported = cluster.kubectl("get", "--raw", "/metrics")
    wanted = ('resource="deployments"', 'verb="APPLY"', f'code="{code}"')
    return sum(
        float(line.rpartition(" ")[2])
        for line in exported.splitlines()
        if line.startswith("apiserver_request_total{") and all(w in line for w in wanted)
    )


def refused_for_good(
    cluster: LocalCluster, namespace: str, code: int, reason: str, says: str
) -> dict[str, Any]:
    """Creates the sample, waits until its workers' objects are refused for good, and checks
    that the operator then stops sending them (three resyncs pass without an apply)."""
    custom, _, _, _ = apis(cluster)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, copy.deepcopy(SAMPLE))
    created = time.monotonic()

    def degraded() -> bool:
        return condition(read(custom, namespace), "Degraded").get("reason") == reason

    wait_until(degraded, 2 * DEFAULT_RESYNC_S, f"Degraded={reason}")
    within_a_resync(reason, time.monotonic() - created)
    service = read(custom, namespace)
    assert says in condition(service, "Degraded")["message"], condition(service, "Degraded")
    assert condition(service, "Ready")["reason"] == reason
    assert reason in cluster.kubectl("get", "embsvc", "-n", namespace)
    attempts = deployment_applies(cluster, code)
    time.sleep(3 * 3 + 1)  # three resyncs of the fixture's operator
    again = deployment_applies(cluster, code) - attempts
    print(f"{attempts:g} refused applies ({code}), then {again:g} in three resyncs")
    assert again == 0, f"{again:g} more applies of a refused spec in three resyncs"
    return service


def fixed_by_a_spec_change(cluster: LocalCluster, namespace: str) -> None:
    custom, _, _, _ = apis(cluster)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "qwen3-4b", {"spec": {"podLabels": {"team": "search"}}}
    )

    def healthy() -> bool:
        return condition(read(custom, namespace), "Degraded").get("status") == "False"

    wait_until(healthy, 60, "Degraded=False after the spec changed")


def test_a_spec_an_admission_policy_refuses_is_not_retried_until_it_changes(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    """A cluster policy (ValidatingAdmissionPolicy) refuses the workers (422): status says so
    in the policy's words, the operator stops re-applying that spec, and the edit that
    satisfies the policy is applied at once."""
    admission = kubernetes.client.AdmissionregistrationV1Api(cluster.api_client())
    name = f"needs-team-{namespace}"[:63]
    rule = {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
            "resources": ["deployments"]}  # fmt: skip
    in_namespace = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    admission.create_validating_admission_policy({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [rule], "namespaceSelector": in_namespace},
            "validations": [{
                "expression": "'team' in object.spec.template.metadata.labels",
                "message": "worker pods in this namespace need a team label",
            }],
        },
    })  # fmt: skip
    admission.create_validating_admission_policy_binding(
        {"metadata": {"name": name}, "spec": {"policyName": name, "validationActions": ["Deny"]}}
    )
    try:
        probe = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "probe"},
                 "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                     "metadata": {"labels": {"a": "b"}},
                     "spec": {"containers": [{"name": "c", "image": "i"}]}}}}  # fmt: skip
        apps = kubernetes.client.AppsV1Api(cluster.api_client())

        def enforced() -> bool:
            try:
                apps.create_namespaced_deployment(namespace, probe, dry_run="All")
            except kubernetes.client.ApiException as error:
                return error.status == 422
            return False

        wait_until(enforced, 30, "the policy in force")
        refused_for_good(cluster, namespace, 422, "InvalidSpec", "need a team label")
        fixed_by_a_spec_change(cluster, namespace)
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)


def test_a_500_that_repeats_for_one_spec_stops_the_retries(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    """An admission webhook that is down (failurePolicy Fail) makes every apply a 500: the
    operator retries it a few times, then reports it and waits for the next spec change."""
    admission = kubernetes.client.AdmissionregistrationV1Api(cluster.api_client())
    name = f"down-{namespace}"[:63]
    admission.create_validating_webhook_configuration({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "down.embedfleet.test",
            "clientConfig": {"url": f"https://127.0.0.1:{free_loopback_port()}/validate"},
            "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "failurePolicy": "Fail", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": 2,
        }],
    })  # fmt: skip
    try:
        service = refused_for_good(
            cluster, namespace, 500, "ApplyRefused", "failed calling webhook"
        )
        print(condition(service, "Degraded")["message"])
    finally:
        admission.delete_validating_webhook_configuration(name)
    fixed_by_a_spec_change(cluster, namespace)


def test_workers_the_apiserver_will_not_create_show_why(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    """A PriorityClass that does not exist: the Deployment applies, but the ReplicaSet
    controller cannot create a single pod, so no pod can say why. Status names the
    controller's reason and message."""
    custom, _, _, _ = apis(cluster)
    body = copy.deepcopy(SAMPLE)
    body["spec"]["priorityClassName"] = "no-such-class"
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    created = time.monotonic()

    def degraded() -> bool:
        return condition(read(custom, namespace), "Degraded").get("reason") == "FailedCreate"

    wait_until(degraded, 2 * DEFAULT_RESYNC_S, "Degraded=FailedCreate")
    took = time.monotonic() - created
    message = condition(read(custom, namespace), "Degraded")["message"]
    print(f"FailedCreate {took:.1f}s after create: {message}")
    within_a_resync("FailedCreate", took)
    assert "no-such-class" in message, message
    assert "FailedCreate" in cluster.kubectl("get", "embsvc", "-n", namespace)
