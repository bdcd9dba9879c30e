"""The activator's own identity on the local control plane: the operator, run with the chart's
ServiceAccount (RBAC as installed), gives each scale-to-zero service a ServiceAccount
`<name>-activator` that it owns and binds to nothing; the activator's pods run as that account,
non-root, with no token mounted; and a token for that account (from the TokenRequest API, as
an attacker inside the pod could not even get) is refused everything an activator must not do.
That the activator still holds and forwards requests is tests/operator/test_scale_from_zero.py.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiException

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from tests.cluster.binaries import helm_path
from tests.cluster.controlplane import LocalCluster
from tests.cluster.kubeconfig import AccountClients
from tests.cluster.manifests import CHART
from tests.cluster.processes import wait_until
from tests.operator.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster]

NAME = "zero"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
# What every authenticated user may do (system:basic-user): ask what it may do.
SELF_REVIEWS = {"selfsubjectaccessreviews", "selfsubjectrulesreviews", "selfsubjectreviews"}


def service_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EmbeddingService",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "targetRequestsPerSecondPerReplica": 50,
            },
        },
    }


def helm(cluster: LocalCluster, *args: str) -> None:
    command = [str(helm_path()), *args, "--kubeconfig", str(cluster.admin_kubeconfig)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (command, result.stdout, result.stderr)


@dataclass(frozen=True)
class Installed:
    namespace: str
    operator: OperatorProcess
    account_kubeconfig: Path  # acting as `<NAME>-activator`


@pytest.fixture(scope="module")
def installed(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """One namespace with the chart installed (operator pods off), the operator run as a
    process with the chart's account, and a scale-to-zero service whose activator is ready."""
    api = cluster.api_client()
    core = kubernetes.client.CoreV1Api(api)
    namespace = f"t-activator-rbac-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_until(lambda: core.read_namespaced_service_account("default", namespace), 30, "default")
    release = f"ef-{uuid.uuid4().hex[:6]}"
    peering = f"peering-{release}"
    values = f"replicaCount=0,operator.peering={peering},operator.watchNamespaces={{{namespace}}}"
    helm(cluster, "install", release, str(CHART), "--namespace", namespace, "--set", values)
    chart_account = cluster.service_account_kubeconfig(namespace, f"{release}-embedfleet-operator")
    operator = OperatorProcess(
        cluster, namespace, tmp_path_factory.mktemp("operator") / "operator.log",
        "--peering", peering, "--resync-seconds", "3", kubeconfig=chart_account,
    )  # fmt: skip
    try:
        custom = kubernetes.client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, service_manifest(NAME)
        )
        apps = kubernetes.client.AppsV1Api(api)

        def activator_ready() -> bool:
            try:
                found = apps.read_namespaced_deployment(f"{NAME}-activator", namespace)
            except kubernetes.client.ApiException as error:
                if error.status == 404:
                    return False
                raise
            return bool(found.status.ready_replicas)

        wait_until(activator_ready, 90, "the activator ready")
        account = cluster.service_account_kubeconfig(namespace, f"{NAME}-activator")
        yield Installed(namespace, operator, account)
    finally:
        assert operator.stop() == 0
        helm(cluster, "uninstall", release, "--namespace", namespace)
        core.delete_namespace(namespace)
    log = operator.log()
    assert "Traceback" not in log, log[-4000:]
    assert "Forbidden" not in log, log[-4000:]  # the chart grants what the operator does


def test_the_activator_runs_as_its_own_account_non_root_without_a_token(
    cluster: LocalCluster, installed: Installed
) -> None:
    api = cluster.api_client()
    core = kubernetes.client.CoreV1Api(api)
    namespace = installed.namespace
    owner = kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME
    )
    account = core.read_namespaced_service_account(f"{NAME}-activator", namespace)
    assert account.automount_service_account_token is False
    [reference] = account.metadata.owner_references
    assert (reference.kind, reference.uid, reference.controller) == (
        "EmbeddingService", owner["metadata"]["uid"], True
    )  # fmt: skip
    assert not account.secrets
    assert not account.image_pull_secrets

    pods = core.list_namespaced_pod(namespace, label_selector=f"embedfleet.dev/activator={NAME}")
    assert pods.items, "no activator pod"
    for pod in pods.items:
        spec = pod.spec
        assert spec.service_account_name == f"{NAME}-activator", spec.service_account_name
        assert spec.automount_service_account_token is False
        # The ServiceAccount admission plugin adds a projected token volume unless told not to.
        assert not any(v.projected for v in spec.volumes or []), spec.volumes
        for container in spec.containers:
            mounts = [m.mount_path for m in container.volume_mounts or []]
            assert TOKEN_PATH not in mounts, mounts
            assert container.security_context.run_as_non_root is True
            assert container.security_context.allow_privilege_escalation is False
        assert spec.security_context.run_as_non_root is True
        assert spec.security_context.run_as_user == 1000

    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    bindings = [
        *rbac.list_role_binding_for_all_namespaces().items,
        *rbac.list_cluster_role_binding().items,
    ]
    bound = [
        b.metadata.name for b in bindings for s in b.subjects or []
        if s.kind == "ServiceAccount" and s.name == f"{NAME}-activator"
    ]  # fmt: skip
    assert bound == []  # no Role, no RoleBinding: nothing beyond what every user has


def test_the_activators_account_may_do_nothing_beyond_asking_what_it_may_do(
    installed: Installed,
) -> None:
    with kubernetes.config.new_client_from_config(str(installed.account_kubeconfig)) as api:
        review = kubernetes.client.AuthorizationV1Api(api).create_self_subject_rules_review(
            {"spec": {"namespace": installed.namespace}}
        )  # a 401 would mean the token does not authenticate, and the 403s below prove nothing
    granted = {r for rule in review.status.resource_rules for r in rule.resources or []}
    assert granted <= SELF_REVIEWS, granted


class _As(AccountClients):
    def __init__(self, kubeconfig: Path) -> None:
        super().__init__(kubeconfig)
        self.discovery = kubernetes.client.DiscoveryV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)


Call = Callable[[_As, str], Any]
ACTIVATOR = f"{NAME}-activator"
FORBIDDEN: list[tuple[str, Call]] = [
    ("list pods", lambda c, ns: c.core.list_namespaced_pod(ns)),
    ("get a pod", lambda c, ns: c.core.read_namespaced_pod(NAME, ns)),  # refused before looked up
    ("get a Secret", lambda c, ns: c.core.read_namespaced_secret("any", ns)),
    ("list Secrets", lambda c, ns: c.core.list_namespaced_secret(ns)),
    ("list Endpoints", lambda c, ns: c.core.list_namespaced_endpoints(ns)),
    ("list EndpointSlices", lambda c, ns: c.discovery.list_namespaced_endpoint_slice(ns)),
    ("list Services", lambda c, ns: c.core.list_namespaced_service(ns)),
    ("patch its Deployment", lambda c, ns: c.apps.patch_namespaced_deployment(
        ACTIVATOR, ns, {"spec": {"replicas": 3}})),
    ("scale the workers", lambda c, ns: c.apps.patch_namespaced_deployment_scale(
        NAME, ns, {"spec": {"replicas": 3}})),
    ("get the EmbeddingService", lambda c, ns: c.custom.get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, NAME)),
    ("patch the EmbeddingService", lambda c, ns: c.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, NAME, {"spec": {"autoscaling": {"minReplicas": 2}}})),
    ("create a Pod", lambda c, ns: c.core.create_namespaced_pod(
        ns, {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}})),
    ("get its own ServiceAccount", lambda c, ns: c.core.read_namespaced_service_account(
        ACTIVATOR, ns)),
    ("create a token for its account", lambda c, ns: c.core.create_namespaced_service_account_token(
        ACTIVATOR, ns, {"spec": {"audiences": ["x"]}})),
    ("create an Event", lambda c, ns: c.core.create_namespaced_event(
        ns, {"metadata": {"name": "x"}, "involvedObject": {"name": NAME}})),
]  # fmt: skip


@pytest.mark.parametrize(("what", "call"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_the_activators_account_is_refused(installed: Installed, what: str, call: Call) -> None:
    with _As(installed.account_kubeconfig) as clients, pytest.raises(ApiException) as refused:
        call(clients, installed.namespace)
    assert refused.value.status == 403, (what, refused.value.status, refused.value.reason)


def test_the_account_goes_with_its_embedding_service(
    cluster: LocalCluster, installed: Installed
) -> None:
    api = cluster.api_client()
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    namespace, name = installed.namespace, "short-lived"
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, service_manifest(name)
    )

    def account_exists() -> bool:
        try:
            core.read_namespaced_service_account(f"{name}-activator", namespace)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    wait_until(account_exists, 60, "the activator's account created")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_until(lambda: not account_exists(), 60, "the account garbage-collected")
