"""Runs the real operator (`embedfleet-operator run`) as a process against the local control
plane, with the CRDs it needs installed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from tests.cluster.controlplane import LocalCluster
from tests.cluster.processes import wait_until

REPO = Path(__file__).resolve().parents[2]
# The 4B sample as users apply it: kwok runs its pods (no real worker behind them).
SAMPLE: dict[str, Any] = yaml.safe_load(
    (REPO / "deploy/samples/qwen3-embedding-4b.yaml").read_text()
)
CRDS = [REPO / "deploy" / "crd" / "embeddingservices.embedfleet.dev.yaml",
        REPO / "deploy" / "crd" / "kopf-peering.yaml"]  # fmt: skip


def install_crds(cluster: LocalCluster) -> None:
    extensions = kubernetes.client.ApiextensionsV1Api(cluster.api_client())
    for path in CRDS:
        for crd in yaml.safe_load_all(path.read_text()):
            try:
                extensions.create_custom_resource_definition(crd)
            except kubernetes.client.ApiException as error:
                if error.status != 409:
                    raise

            def established(name: str = crd["metadata"]["name"]) -> bool:
                status = extensions.read_custom_resource_definition(name).status
                return any(
                    c.type == "Established" and c.status == "True" for c in status.conditions or []
                )

            wait_until(established, 30, f"CRD {crd['metadata']['name']}")


def service_warnings(cluster: LocalCluster, namespace: str, reason: str) -> list[Any]:
    """The Warning events with this reason that the operator raised on EmbeddingServices."""
    events = kubernetes.client.CoreV1Api(cluster.api_client()).list_namespaced_event(
        namespace, field_selector="involvedObject.kind=EmbeddingService"
    )
    return [e for e in events.items if e.type == "Warning" and e.reason == reason]


def create_peering(cluster: LocalCluster, namespace: str, name: str = "embedfleet") -> None:
    kubernetes.client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name}},
    )  # fmt: skip


class OperatorProcess:
    def __init__(
        self,
        cluster: LocalCluster,
        namespace: str,
        log_path: Path,
        *args: str,
        kubeconfig: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """`kubeconfig` defaults to the admin's; pass a ServiceAccount's to run with its RBAC.
        `env` adds to the environment (POD_ID: the pod name the chart passes)."""
        assert cluster.admin_kubeconfig is not None
        kubeconfig = kubeconfig or cluster.admin_kubeconfig
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "embedfleet_operator.cli", "run",
                 "--namespace", namespace, "--log-format", "plain", *args],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "KUBECONFIG": str(kubeconfig), **(env or {})},
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    killed = False

    def kill(self) -> None:
        self.killed = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(10)
