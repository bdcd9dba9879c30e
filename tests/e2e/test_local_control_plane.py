"""The local control plane is a real Kubernetes: scheduling onto kwok GPU nodes, loopback pod
IPs a process can bind, structural-schema enforcement, garbage collection and RBAC."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import urllib.request

import kubernetes
import pytest

from tests.cluster.binaries import pinned_versions
from tests.cluster.controlplane import GPU_RESOURCE, LocalCluster
from tests.cluster.processes import wait_until

pytestmark = pytest.mark.cluster


def test_version_reports_the_pinned_release(cluster: LocalCluster) -> None:
    version = kubernetes.client.VersionApi(cluster.api_client()).get_code()
    assert version.git_version == pinned_versions()["K8S_VERSION"]
    assert version.major == "1"


def test_gpu_deployment_lands_on_a_kwok_gpu_node_with_a_loopback_pod_ip(
    cluster: LocalCluster, namespace: str
) -> None:
    client = cluster.api_client()
    apps, core = kubernetes.client.AppsV1Api(client), kubernetes.client.CoreV1Api(client)
    labels = {"app": "gpu-probe"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "gpu-probe"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "worker",
                                "image": "example.invalid/worker:1",
                                "resources": {"limits": {GPU_RESOURCE: "1"}},
                            }
                        ]
                    },
                },
            },
        },
    )

    def ready_pod() -> kubernetes.client.V1Pod | None:
        for pod in core.list_namespaced_pod(namespace, label_selector="app=gpu-probe").items:
            conditions = {c.type: c.status for c in (pod.status.conditions or [])}
            if pod.status.phase == "Running" and conditions.get("Ready") == "True":
                return pod
        return None

    wait_until(ready_pod, 60, "the GPU pod to be Running and Ready")
    pod = ready_pod()
    assert pod is not None
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.annotations.get("kwok.x-k8s.io/node") == "fake"
    assert int(node.status.allocatable[GPU_RESOURCE]) >= 1
    pod_ip = ipaddress.ip_address(pod.status.pod_ip)
    assert pod_ip.is_loopback, pod_ip
    assert pod_ip != ipaddress.ip_address("127.0.0.1")

    # The pod IP is usable: a real process can listen on it and be reached there.
    with socket.socket() as server:
        server.bind((str(pod_ip), 0))
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection((str(pod_ip), port), timeout=5) as conn:
            accepted, _ = server.accept()
            conn.sendall(b"ping")
            assert accepted.recv(4) == b"ping"
            accepted.close()

    deployment = apps.read_namespaced_deployment("gpu-probe", namespace)
    assert deployment.status.ready_replicas == 1


def test_crd_with_non_structural_schema_is_rejected(cluster: LocalCluster) -> None:
    api = kubernetes.client.ApiextensionsV1Api(cluster.api_client())
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    # Non-structural: a property without a type.
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"properties": {"size": {}}}},
                        }
                    },
                }
            ],
        },
    }
    with pytest.raises(kubernetes.client.ApiException) as raised:
        api.create_custom_resource_definition(crd)
    assert raised.value.status == 422
    assert "type" in json.loads(raised.value.body)["message"]


def test_deleting_an_owner_garbage_collects_its_dependents(
    cluster: LocalCluster, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                    }
                ],
            }
        },
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except kubernetes.client.ApiException as error:
            return error.status == 404
        return False

    wait_until(dependent_gone, 60, "the garbage collector to delete the dependent")


def test_service_account_without_rights_gets_403(cluster: LocalCluster, namespace: str) -> None:
    admin_core = kubernetes.client.CoreV1Api(cluster.api_client())
    admin_core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    kubeconfig = cluster.service_account_kubeconfig(namespace, "nobody")
    with kubernetes.config.new_client_from_config(config_file=str(kubeconfig)) as sa_client:
        _assert_forbidden_until_granted(cluster, namespace, kubernetes.client.CoreV1Api(sa_client))


def _assert_forbidden_until_granted(
    cluster: LocalCluster, namespace: str, sa_core: kubernetes.client.CoreV1Api
) -> None:
    with pytest.raises(kubernetes.client.ApiException) as raised:
        sa_core.list_namespaced_pod(namespace)
    assert raised.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in raised.value.body

    # The same identity works once RBAC grants the right: the 403 came from RBAC, not auth.
    rbac = kubernetes.client.RbacAuthorizationV1Api(cluster.api_client())
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "nobody-reads-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
        },
    )
    wait_until(lambda: sa_core.list_namespaced_pod(namespace) is not None, 30, "RBAC to allow")


def test_anonymous_requests_are_refused(cluster: LocalCluster) -> None:
    assert cluster.pki is not None
    context = ssl.create_default_context(cafile=str(cluster.pki.ca_cert))
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{cluster.server}/api/v1/namespaces", context=context, timeout=5)
    raised.value.close()
    assert raised.value.code in (401, 403)


def test_namespace_lifecycle_runs_through_the_namespace_controller(cluster: LocalCluster) -> None:
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    core.create_namespace({"metadata": {"name": "lifecycle-probe"}})
    assert core.read_namespace("lifecycle-probe").status.phase == "Active"
    # The ServiceAccount controller (kube-controller-manager) fills every new namespace.
    wait_until(
        lambda: core.read_namespaced_service_account("default", "lifecycle-probe"),
        30,
        "the default ServiceAccount",
    )
    core.create_namespaced_config_map("lifecycle-probe", {"metadata": {"name": "content"}})
    core.delete_namespace("lifecycle-probe")

    def namespace_gone() -> bool:
        try:
            core.read_namespace("lifecycle-probe")
        except kubernetes.client.ApiException as error:
            return error.status == 404
        return False

    wait_until(namespace_gone, 60, "the namespace controller to finalize the namespace")


def test_every_address_the_cluster_hands_out_is_loopback(
    cluster: LocalCluster, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    service = core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "probe"},
            "spec": {"selector": {"app": "probe"}, "ports": [{"port": 8000}]},
        },
    )
    assert ipaddress.ip_address(service.spec.cluster_ip).is_loopback
    for node in core.list_node().items:
        for address in node.status.addresses:
            if address.type == "InternalIP":
                assert ipaddress.ip_address(address.address).is_loopback
    assert cluster.server.startswith("https://127.0.0.1:")
