"""A real Kubernetes control plane on loopback, without containers: etcd, kube-apiserver (RBAC
on), kube-controller-manager, kube-scheduler and kwok with fake GPU nodes whose pods get IPs
from 127.64.0.0/12. Everything listens on 127.0.0.1 only and stops with `stop()`."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes

from tests.cluster.binaries import HERE, binaries_dir
from tests.cluster.certs import ControlPlanePKI, create_pki
from tests.cluster.kubeconfig import write_kubeconfig
from tests.cluster.processes import ManagedProcess, free_loopback_port, wait_until

# Every address the cluster hands out is loopback: no test can ever send traffic elsewhere.
SERVICE_CIDR = "127.96.0.0/16"
FIRST_SERVICE_IP = "127.96.0.1"
# Each node's pods get a /24 of 127.64.0.0/12, from a random first block per cluster: clusters
# run side by side on one machine (tests, the demo, a benchmark) and real processes bind pod
# IPs, so two clusters handing out 127.64.0.1 had one's worker answer the other's probes.
POD_CIDR = "127.64.0.0/12"
POD_BLOCKS = 16 * 256
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


@dataclass
class LocalCluster:
    workdir: Path
    bin_dir: Path = field(default_factory=binaries_dir)
    api_port: int = 0
    processes: list[ManagedProcess] = field(default_factory=list)
    pki: ControlPlanePKI | None = None
    admin_kubeconfig: Path | None = None
    _admin_client: kubernetes.client.ApiClient | None = None

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    # ----------------------------------------------------------------------------- lifecycle
    def start(self, gpu_nodes: int = 2, gpus_per_node: int = 8) -> None:
        try:
            self._start(gpu_nodes, gpus_per_node)
        except BaseException:
            self.stop()
            raise

    def _start(self, gpu_nodes: int, gpus_per_node: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = create_pki(self.workdir / "pki", service_ip=FIRST_SERVICE_IP)
        etcd_port, etcd_peer_port = free_loopback_port(), free_loopback_port()
        self.api_port = free_loopback_port()
        self.admin_kubeconfig = write_kubeconfig(
            self.workdir / "admin.kubeconfig",
            server=self.server,
            ca_cert=self.pki.ca_cert,
            user="embedfleet-admin",
            client_cert=self.pki.admin_cert,
            client_key=self.pki.admin_key,
        )

        etcd = self._spawn(
            "etcd",
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}",
            "--unsafe-no-fsync",  # test data: durability is not needed, speed is
            "--log-level=warn",
        )
        wait_until(
            lambda: etcd.check_alive() or _http_ok(f"http://127.0.0.1:{etcd_port}/health"),
            60,
            "etcd /health",
        )

        pki = self.pki
        apiserver = self._spawn(
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # No kubelet runs, so nothing would ever serve the `kubernetes` Service's endpoint.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--v=1",
        )
        wait_until(lambda: apiserver.check_alive() or self._readyz(), 120, "kube-apiserver /readyz")

        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={self.admin_kubeconfig}",
            f"--authentication-kubeconfig={self.admin_kubeconfig}",
            f"--authorization-kubeconfig={self.admin_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_loopback_port()}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_private_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=false",
            "--controllers=*,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
            "--v=1",
        )
        self._spawn(
            "kube-scheduler",
            f"--kubeconfig={self.admin_kubeconfig}",
            f"--authentication-kubeconfig={self.admin_kubeconfig}",
            f"--authorization-kubeconfig={self.admin_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_loopback_port()}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
            "--leader-elect=false",
            "--v=1",
        )
        self._spawn(
            "kwok",
            f"--kubeconfig={self.admin_kubeconfig}",
            f"--config={HERE / 'kwok.yaml'}",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            "--manage-nodes-with-annotation-selector=" + "=".join(FAKE_NODE_ANNOTATION),
        )

        core = kubernetes.client.CoreV1Api(self.api_client())
        first_block = random.randrange(POD_BLOCKS - gpu_nodes)
        for index in range(gpu_nodes):
            core.create_node(
                gpu_node_manifest(f"kwok-gpu-{index}", index, gpus_per_node, first_block)
            )
        wait_until(
            lambda: self.check_alive() or self._all_nodes_ready(core, gpu_nodes),
            60,
            "kwok nodes Ready",
        )
        # Pods need the ServiceAccount controller to have made `default` before admission.
        wait_until(
            lambda: (
                self.check_alive() or core.read_namespaced_service_account("default", "default")
            ),
            60,
            "the default ServiceAccount",
        )

    def stop(self) -> None:
        if self._admin_client is not None:
            self._admin_client.close()
            self._admin_client = None
        for process in reversed(self.processes):
            process.stop()

    def kill_apiserver(self) -> None:
        """SIGKILLs kube-apiserver, as a crash or an OOM kill would (`restart_apiserver`
        brings it back)."""
        process = self._process("kube-apiserver")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        wait_until(lambda: not process.alive(), 10, "kube-apiserver to die")

    def restart_apiserver(self) -> None:
        """Starts the killed kube-apiserver again, same flags and port; returns at /readyz."""
        self._process("kube-apiserver").start()
        wait_until(lambda: self.check_alive() or self._readyz(), 120, "kube-apiserver /readyz")

    def _process(self, name: str) -> ManagedProcess:
        return next(p for p in self.processes if p.name == name)

    def check_alive(self) -> bool:
        """Raises with the log tail if any component died; False otherwise (for wait_until)."""
        for process in self.processes:
            process.check_alive()
        return False

    def running_pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.alive()]

    # ----------------------------------------------------------------------------- clients
    def api_client(self) -> kubernetes.client.ApiClient:
        """The shared admin client (system:masters), closed by `stop()`."""
        assert self.admin_kubeconfig is not None
        if self._admin_client is None:
            self._admin_client = kubernetes.config.new_client_from_config(
                config_file=str(self.admin_kubeconfig)
            )
        return self._admin_client

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """kubectl as the admin, as a user types it; its stdout, or an AssertionError."""
        command = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.admin_kubeconfig)]
        result = subprocess.run(
            [*command, *args], input=stdin, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"kubectl {args}: {result.stderr}"
        return result.stdout

    def service_account_kubeconfig(self, namespace: str, name: str, *, hours: int = 2) -> Path:
        """A kubeconfig authenticating as ServiceAccount `namespace/name` with a bound token
        from the TokenRequest API, so least-privilege RBAC can be tested for real."""
        assert self.pki is not None
        core = kubernetes.client.CoreV1Api(self.api_client())
        request = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(
                audiences=["https://kubernetes.default.svc.cluster.local"],
                expiration_seconds=hours * 3600,
            )
        )
        token = core.create_namespaced_service_account_token(name, namespace, request).status.token
        return write_kubeconfig(
            self.workdir / f"sa-{namespace}-{name}.kubeconfig",
            server=self.server,
            ca_cert=self.pki.ca_cert,
            user=f"system:serviceaccount:{namespace}:{name}",
            token=token,
            namespace=namespace,
        )

    # ----------------------------------------------------------------------------- internals
    def _spawn(self, binary: str, *args: str) -> ManagedProcess:
        process = ManagedProcess(
            binary,
            [str(self.bin_dir / binary), *args],
            self.workdir / f"{binary}.log",
            self.workdir,
        )
        process.start()
        self.processes.append(process)
        return process

    def _readyz(self) -> bool:
        assert self.pki is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return _http_ok(f"{self.server}/readyz", context)

    @staticmethod
    def _all_nodes_ready(core: kubernetes.client.CoreV1Api, expected: int) -> bool:
        nodes = core.list_node().items
        ready = [
            n
            for n in nodes
            if any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
        ]
        return len(ready) >= expected


def gpu_node_manifest(name: str, index: int, gpus: int, first_block: int = 0) -> dict[str, Any]:
    """A kwok-managed node advertising `gpus` NVIDIA GPUs and its own loopback pod CIDR (the
    /24 `first_block + index` of POD_CIDR)."""
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: str(gpus)}
    block = first_block + index
    pod_cidr = f"127.{64 + block // 256}.{block % 256}.0/24"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.count": str(gpus),
            },
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": f"127.1.0.{index + 1}"},
                {"type": "Hostname", "address": name},
            ],
        },
    }


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as error:
        error.close()  # not ready yet (e.g. 500 from /readyz); close it to free the socket
        return False


def start_local_cluster(workdir: Path | None = None, **kwargs: int) -> LocalCluster:
    cluster = LocalCluster(workdir or Path(tempfile.mkdtemp(prefix="embedfleet-k8s-")))
    cluster.start(**kwargs)
    return cluster
