"""Installing embedfleet for real on the local control plane: the chart lints and validates its
values, `deploy/` is the chart's default rendering, both install paths apply (server-side dry
run, then for real) and give the same objects, and the operator running with the chart's
ServiceAccount does a whole create / scale / delete cycle while that account is refused
everything else."""

from __future__ import annotations

import copy
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from embedfleet_operator.settings import DEFAULT_WORKER_IMAGE
from tests.cluster.binaries import helm_path
from tests.cluster.controlplane import LocalCluster
from tests.cluster.kubeconfig import AccountClients
from tests.cluster.manifests import (
    CHART,
    NAMESPACE,
    RELEASE,
    helm_template,
    stale,
    without_helm_labels,
)
from tests.cluster.processes import wait_until
from tests.operator.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
SAMPLE: dict[str, Any] = yaml.safe_load(
    (REPO / "deploy/samples/qwen3-embedding-4b.yaml").read_text()
)


def run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def helm(cluster: LocalCluster | None, *args: str, check: bool = True) -> str:
    command = [str(helm_path()), *args]
    if cluster is not None:
        command += ["--kubeconfig", str(cluster.admin_kubeconfig)]
    return run(command, check=check).stdout


def kubectl(cluster: LocalCluster, *args: str, stdin: str | None = None) -> str:
    return cluster.kubectl(*args, stdin=stdin)


# ----------------------------------------------------------------------- chart, no cluster
def test_helm_lint_passes_for_defaults_and_every_option() -> None:
    helm(None, "lint", "--strict", str(CHART))
    everything = "monitoring.serviceMonitor.enabled=true,monitoring.podMonitor.enabled=true," \
        "monitoring.prometheusRule.enabled=true,monitoring.grafanaDashboard.enabled=true," \
        "sample.enabled=true,operator.watchNamespaces={a,b}"  # fmt: skip
    helm(None, "lint", "--strict", str(CHART), "--set", everything)


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("replicaCount=-1", "replicaCount"),
        ("operator.logFormat=yaml", "logFormat"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("nosuchvalue=1", "nosuchvalue"),
        ("registry=registry.example.com/ml/", "registry"),
    ],
)
def test_values_schema_rejects_bad_values(value: str, complaint: str) -> None:
    result = run([str(helm_path()), "template", "x", str(CHART), "--set", value], check=False)
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr


def test_deploy_is_the_charts_default_rendering() -> None:
    assert stale() == [], "run `make manifests`"


def test_every_optional_template_renders_what_it_promises() -> None:
    rendered = helm_template(
        RELEASE, NAMESPACE,
        "monitoring.serviceMonitor.enabled=true", "monitoring.podMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true", "monitoring.grafanaDashboard.enabled=true",
        "sample.enabled=true",
    )  # fmt: skip
    kinds = {body["kind"]: body for _, body in rendered}
    assert {
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "EmbeddingService",
    } <= set(kinds)
    alerts = {r["alert"] for g in kinds["PrometheusRule"]["spec"]["groups"] for r in g["rules"]}
    assert "EmbedfleetWorkerDown" in alerts
    assert kinds["EmbeddingService"]["spec"]["resources"]["gpus"] == 0
    namespaced = helm_template(RELEASE, NAMESPACE, "operator.watchNamespaces={team-a,team-b}")
    peerings = [(b["kind"], b["metadata"]["namespace"]) for _, b in namespaced
                if b["kind"].endswith("KopfPeering")]  # fmt: skip
    assert peerings == [("KopfPeering", "team-a"), ("KopfPeering", "team-b")]


def test_one_registry_value_names_both_images() -> None:
    """The README's real-cluster install: images built and pushed with `make images
    push-images REGISTRY=...`, the chart installed with `--set registry=...` and the samples
    applied as they are (they name no image): every pod then pulls from that registry."""
    registry = "registry.example.com/ml"
    rendered = helm_template(RELEASE, NAMESPACE, f"registry={registry}", "sample.enabled=true")
    kinds = {body["kind"]: body for _, body in rendered}
    operator = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert operator["image"] == f"{registry}/operator:{APP_VERSION}"
    environment = {e["name"]: e.get("value") for e in operator["env"]}
    assert environment["EMBEDFLEET_OPERATOR_WORKER_IMAGE"] == f"{registry}/worker:{APP_VERSION}"
    assert "image" not in kinds["EmbeddingService"]["spec"]
    for sample in (REPO / "deploy" / "samples").glob("*.yaml"):
        assert "image" not in yaml.safe_load(sample.read_text())["spec"], sample.name
    pinned = helm_template(RELEASE, NAMESPACE, f"registry={registry}", "image.tag=1.2.3",
                           "workerImage=other.example.com/worker@sha256:abc")  # fmt: skip
    operator = next(b for _, b in pinned if b["kind"] == "Deployment")
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{registry}/operator:1.2.3"
    environment = {e["name"]: e.get("value") for e in container["env"]}
    assert environment["EMBEDFLEET_OPERATOR_WORKER_IMAGE"] == "other.example.com/worker@sha256:abc"


def test_make_images_builds_and_pushes_what_the_chart_pulls() -> None:
    registry = "registry.example.com/ml"
    make = ["make", "--no-print-directory", "-C", str(REPO), f"REGISTRY={registry}"]
    echoed = run([*make, "CONTAINER_TOOL=echo", "push-images"]).stdout.splitlines()
    assert echoed == [
        f"build -f Dockerfile.worker -t {registry}/worker:{APP_VERSION} .",
        f"build -f Dockerfile.operator -t {registry}/operator:{APP_VERSION} .",
        f"push {registry}/worker:{APP_VERSION}",
        f"push {registry}/operator:{APP_VERSION}",
    ]
    without = run([*make, "CONTAINER_TOOL=", "images"], check=False)
    assert without.returncode != 0
    for command in (
        f"docker build -f Dockerfile.worker -t {registry}/worker:{APP_VERSION} .",
        f"docker build -f Dockerfile.operator -t {registry}/operator:{APP_VERSION} .",
        f"docker push {registry}/worker:{APP_VERSION}",
        f"docker push {registry}/operator:{APP_VERSION}",
    ):
        assert command in without.stdout, without.stdout
    assert f"ghcr.io/embedfleet/worker:{APP_VERSION}" == DEFAULT_WORKER_IMAGE


# ----------------------------------------------------------------------- on the control plane
IGNORED_META = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation")


def normalized(body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body.pop("status", None)
    meta = body["metadata"]
    for key in IGNORED_META:
        meta.pop(key, None)
    tooling = ("meta.helm.sh/", "kubectl.kubernetes.io/", "deployment.kubernetes.io/")
    annotations = {
        k: v for k, v in (meta.pop("annotations", None) or {}).items()
        if not k.startswith(tooling)
    }  # fmt: skip
    if annotations:
        meta["annotations"] = annotations
    return without_helm_labels(body)


def live_objects(cluster: LocalCluster) -> dict[tuple[str, str], dict[str, Any]]:
    """The installed objects (everything the chart renders), read back from the apiserver."""
    found = {}
    for _, body in helm_template():
        kind, name = body["kind"], body["metadata"]["name"]
        namespace = body["metadata"].get("namespace")
        args = ["get", kind, name, "-o", "yaml"] + (["-n", namespace] if namespace else [])
        found[(kind, name)] = normalized(yaml.safe_load(kubectl(cluster, *args)))
    return found


@pytest.mark.cluster
def test_kustomize_and_helm_install_the_same_objects(cluster: LocalCluster) -> None:
    rendered = helm(None, "template", RELEASE, str(CHART), "--namespace", NAMESPACE)
    # A dry run cannot create the types and the namespace the other objects need, so those
    # go first for real (both paths share them: the chart's crds/ are deploy/crd/'s copies).
    kubectl(cluster, "apply", "--server-side", "-f", str(CHART / "crds"))
    kubectl(
        cluster, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(CHART / "crds")
    )
    kubectl(cluster, "apply", "--server-side", "-f", str(REPO / "deploy/namespace.yaml"))
    # Server-side dry runs of both paths: the apiserver validates everything, persists nothing.
    kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-k", str(REPO / "deploy"))
    kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "embedfleet-operator" not in kubectl(cluster, "get", "deployments", "-A")
    # For real, kustomize first.
    kubectl(cluster, "apply", "--server-side", "-k", str(REPO / "deploy"))
    by_kustomize = live_objects(cluster)
    # Then Helm takes the same objects over: a real install of the chart, by server-side apply
    # without forcing, so any field whose value differs from kubectl's would be a conflict.
    helm(cluster, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--take-ownership")
    try:
        by_helm = live_objects(cluster)
        assert by_helm.keys() == by_kustomize.keys()
        for key, body in by_kustomize.items():
            assert by_helm[key] == body, key
        listed = helm(cluster, "list", "--namespace", NAMESPACE, "-o", "yaml")
        assert yaml.safe_load(listed)[0]["status"] == "deployed"
    finally:
        helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE)
    # Uninstall removes what it installed (CRDs stay, as Helm does with crds/).
    for kind, name in by_kustomize:
        if kind in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"):
            result = subprocess.run(
                [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.admin_kubeconfig),
                 "get", kind, name], capture_output=True, text=True,
            )  # fmt: skip
            assert result.returncode != 0, (kind, name)


@pytest.fixture
def chart_account(cluster: LocalCluster, namespace: str) -> Iterator[tuple[Path, str]]:
    """The chart installed into the test's namespace (operator pods off, watching only that
    namespace, its own peering) and a kubeconfig with its ServiceAccount's token."""
    release = f"ef-{uuid.uuid4().hex[:6]}"
    peering = f"peering-{release}"
    values = f"replicaCount=0,operator.peering={peering},operator.watchNamespaces={{{namespace}}}"
    helm(cluster, "install", release, str(CHART), "--namespace", namespace, "--set", values)
    try:
        account = f"{release}-embedfleet-operator"
        yield cluster.service_account_kubeconfig(namespace, account), peering
    finally:
        helm(cluster, "uninstall", release, "--namespace", namespace)


@pytest.fixture
def chart_operator(
    cluster: LocalCluster, namespace: str, tmp_path: Path, chart_account: tuple[Path, str]
) -> Iterator[OperatorProcess]:
    """The operator run as a process with the chart's ServiceAccount token: RBAC as in a
    cluster."""
    kubeconfig, peering = chart_account
    operator = OperatorProcess(
        cluster, namespace, tmp_path / "operator.log",
        "--peering", peering, "--autoscale-seconds", "1", "--resync-seconds", "3",
        kubeconfig=kubeconfig,
    )  # fmt: skip
    yield operator
    assert operator.stop() == 0
    log = operator.log()
    assert "Traceback" not in log, log[-4000:]
    assert "Forbidden" not in log, log[-4000:]


@pytest.mark.cluster
def test_operator_with_the_charts_service_account_creates_scales_and_deletes(
    cluster: LocalCluster, namespace: str, chart_operator: OperatorProcess
) -> None:
    api = cluster.api_client()
    custom = kubernetes.client.CustomObjectsApi(api)
    apps = kubernetes.client.AppsV1Api(api)
    body = copy.deepcopy(SAMPLE)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def ready() -> bool:
        service = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "qwen3-4b")
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in (service.get("status") or {}).get("conditions", []))  # fmt: skip

    wait_until(ready, 90, "Ready=True under the chart's RBAC")
    # Scale: a higher minReplicas moves the fleet (the autoscaler writes the scale subresource).
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "qwen3-4b", {"spec": {"autoscaling": {"minReplicas": 3}}}
    )
    wait_until(
        lambda: apps.read_namespaced_deployment("qwen3-4b", namespace).status.ready_replicas == 3,
        90, "three ready workers",
    )  # fmt: skip
    events = (
        kubernetes.client.CoreV1Api(api)
        .list_namespaced_event(namespace, field_selector="involvedObject.kind=EmbeddingService")
        .items
    )
    assert {"WorkersReady"} <= {e.reason for e in events}
    # Delete: the workers go with it (owner references, garbage collection).
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "qwen3-4b")

    def gone() -> bool:
        try:
            apps.read_namespaced_deployment("qwen3-4b", namespace)
        except kubernetes.client.ApiException as error:
            return error.status == 404
        return False

    wait_until(gone, 90, "the Deployment garbage-collected")


FORBIDDEN = [
    ("read Secrets", lambda c, ns: c.core.list_namespaced_secret(ns)),
    ("read a Secret by name", lambda c, ns: c.core.read_namespaced_secret("any", ns)),
    ("read Secrets cluster-wide", lambda c, ns: c.core.list_secret_for_all_namespaces()),
    ("create a ConfigMap", lambda c, ns: c.core.create_namespaced_config_map(
        ns, {"metadata": {"name": "x"}})),
    ("create a Pod", lambda c, ns: c.core.create_namespaced_pod(
        ns, {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}})),
    ("delete a Deployment", lambda c, ns: c.apps.delete_namespaced_deployment("any", ns)),
    ("delete a Service", lambda c, ns: c.core.delete_namespaced_service("any", ns)),
    ("delete a ServiceAccount", lambda c, ns: c.core.delete_namespaced_service_account("x", ns)),
    ("create an activator's token", lambda c, ns: c.core.create_namespaced_service_account_token(
        "any-activator", ns, {"spec": {"audiences": ["x"]}})),
    ("create a ServiceAccount token", lambda c, ns: c.core.create_namespaced_service_account_token(
        "default", ns, {"spec": {"audiences": ["x"]}})),
    ("patch a Node", lambda c, ns: c.core.patch_node(
        "kwok-gpu-0", {"metadata": {"labels": {"x": "y"}}})),
    ("create a ClusterRole", lambda c, ns: c.rbac.create_cluster_role(
        {"metadata": {"name": "escalate"}, "rules": []})),
    ("bind a Role", lambda c, ns: c.rbac.create_namespaced_role_binding(
        ns, {"metadata": {"name": "x"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
             "kind": "ClusterRole", "name": "cluster-admin"}, "subjects": []})),
    ("exec into a Pod", lambda c, ns: c.core.connect_get_namespaced_pod_exec("any", ns)),
    ("create a StatefulSet", lambda c, ns: c.apps.create_namespaced_stateful_set(
        ns, {"metadata": {"name": "x"}, "spec": {"selector": {}, "serviceName": "x",
             "template": {}}})),
]  # fmt: skip


class _Clients(AccountClients):
    def __init__(self, kubeconfig: Path) -> None:
        super().__init__(kubeconfig)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(self.api)


@pytest.mark.cluster
@pytest.mark.parametrize(("what", "call"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_the_charts_service_account_is_refused(
    cluster: LocalCluster,
    namespace: str,
    chart_account: tuple[Path, str],
    what: str,
    call: Any,
) -> None:
    kubeconfig, _ = chart_account
    with _Clients(kubeconfig) as clients, pytest.raises(ApiException) as refused:
        call(clients, namespace)
    assert refused.value.status == 403, (what, refused.value.status, refused.value.reason)
