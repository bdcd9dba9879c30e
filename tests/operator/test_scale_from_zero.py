"""Scale from zero end to end on the local control plane: real MiniLM workers and the real
activator run as processes for their kwok pods (tests/cluster/kubelet.py), clients reach the
Service's ClusterIP through the kube-proxy stand-in (tests/cluster/service_proxy.py). A
`minReplicas: 0` service goes to zero when idle, its Service then points at the activator, and
50 concurrent requests from the official openai client (no retries) all get 200, the first
within a worker's start time plus 2 s; the Service points back at the workers once one is
ready, and status, Events and the activator's metrics tell the story."""

from __future__ import annotations

import concurrent.futures
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import openai
import pytest

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from embedfleet_operator.operator_metrics import WORKER_START as OPERATOR_WORKER_START
from embedfleet_worker.metrics import WORKER_START
from tests.cluster.controlplane import LocalCluster
from tests.cluster.kubelet import REAL_PROCESS_ANNOTATION, LoopbackKubelet
from tests.cluster.processes import ComponentDied, free_loopback_port, wait_until
from tests.cluster.service_proxy import ServiceProxy
from tests.modelzoo import minilm_dir
from tests.operator.operator_process import OperatorProcess, create_peering, install_crds

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAME = "minilm"
TICK, IDLE, STABILIZATION = 2, 4, 6
CONCURRENT = 50


def service_manifest() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EmbeddingService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"name": str(minilm_dir())},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
            "podAnnotations": {REAL_PROCESS_ANNOTATION: "true"},
            "autoscaling": {
                "minReplicas": 0, "maxReplicas": 2, "targetRequestsPerSecondPerReplica": 50,
                "idleTimeoutSeconds": IDLE, "scaleDownStabilizationSeconds": STABILIZATION,
            },
        },
    }  # fmt: skip


@pytest.fixture
def fleet(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> Iterator[tuple[str, LoopbackKubelet]]:
    install_crds(cluster)
    create_peering(cluster, namespace)
    metrics = f"127.0.0.1:{free_loopback_port()}"
    operator = OperatorProcess(
        cluster, namespace, tmp_path / "operator.log",
        "--resync-seconds", "5", "--autoscale-seconds", str(TICK), "--scrape-timeout-seconds", "1",
        "--metrics-address", metrics,
    )  # fmt: skip
    kubelet = LoopbackKubelet(cluster.api_client(), namespace, tmp_path / "pods")
    with kubelet:
        try:
            yield f"http://{metrics}/metrics", kubelet
        finally:
            assert operator.stop() == 0
    assert not kubelet.errors, kubelet.errors
    assert "Traceback" not in operator.log(), operator.log()[-4000:]


def test_an_idle_fleet_goes_to_zero_and_the_next_requests_wake_it(
    cluster: LocalCluster, namespace: str, fleet: tuple[str, LoopbackKubelet]
) -> None:
    operator_metrics, kubelet = fleet
    api = cluster.api_client()
    custom = kubernetes.client.CustomObjectsApi(api)
    apps = kubernetes.client.AppsV1Api(api)
    core = kubernetes.client.CoreV1Api(api)
    created = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, service_manifest())

    def status() -> dict[str, Any]:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
        return dict(body.get("status") or {})

    def ready(name: str) -> int:
        if failed := kubelet.failed_loads():
            raise ComponentDied(f"a worker could not load its model: {failed[0]}")
        deployment = apps.read_namespaced_deployment(name, namespace)
        return int(deployment.status.ready_replicas or 0)

    def replicas() -> int:
        return int(apps.read_namespaced_deployment(NAME, namespace).spec.replicas or 0)

    def selector() -> dict[str, str]:
        return dict(core.read_namespaced_service(NAME, namespace).spec.selector)

    wait_until(lambda: ready(NAME) == 1, 180, "the first worker ready")
    start_time = time.monotonic() - created  # a worker's start, from nothing to Ready
    # The operator measures it from the pod's timestamps (whole seconds): at least the
    # worker's own process start to Ready, at most what this test saw.
    worker = next(p for p in kubelet.running() if p.name.startswith(f"{NAME}-")
                  and "activator" not in p.name)  # fmt: skip
    own = float(_sample(_get(f"{worker.base_url}/metrics"), WORKER_START) or "nan")
    wait_until(lambda: "workerStartSeconds" in status(), 30, "the measured start in status")
    measured = status()["workerStartSeconds"]
    assert own - 1.0 <= measured <= start_time + 1.0, (own, measured, start_time)
    wait_until(lambda: ready(f"{NAME}-activator") == 1, 60, "the activator ready")
    wait_until(lambda: replicas() == 0, 180, "the idle fleet at zero")  # idle >= the measured start
    wait_until(lambda: selector() == {"embedfleet.dev/activator": NAME}, 30,
               "the Service pointing at the activator")  # fmt: skip
    wait_until(lambda: not any(p.name.startswith(f"{NAME}-") and "activator" not in p.name
                               for p in kubelet.running()), 60, "no worker process")  # fmt: skip

    with (
        ServiceProxy(api, namespace, f"{NAME}-workers"),
        ServiceProxy(api, namespace, NAME) as proxy,
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as client,
    ):
        sent = time.monotonic()
        answered: list[float] = []

        def embed(index: int) -> int:
            result = client.embeddings.create(model=str(minilm_dir()), input=f"text {index}")
            answered.append(time.monotonic() - sent)
            return len(result.data[0].embedding)

        with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
            dimensions = list(pool.map(embed, range(CONCURRENT)))
        first = min(answered)
        summary = (
            f"worker start {start_time:.1f}s; {CONCURRENT} requests from zero: first answer "
            f"after {first:.1f}s, last after {max(answered):.1f}s"
        )
        print(summary)
        assert dimensions == [384] * CONCURRENT, summary
        assert first <= start_time + 2.0, summary
        wait_until(lambda: selector() == {"embedfleet.dev/service": NAME}, 30,
                   "the Service pointing back at the workers")  # fmt: skip

    assert status()["lastScaleReason"] in ("ScaledFromZero", "RequestsPerSecondAboveTarget")
    events = core.list_namespaced_event(
        namespace, field_selector="involvedObject.kind=EmbeddingService"
    )
    woken = [e.message for e in events.items if e.reason == "ScaledFromZero"]
    assert len(woken) == 1, [e.reason for e in events.items]
    assert "new workers expected ready in about" in woken[0], woken
    starts = OPERATOR_WORKER_START + '_count{namespace="%s",service="%s"}'
    # Both workers' starts, each once: the first and the one woken from zero.
    wait_until(lambda: _sample(_get(operator_metrics), starts % (namespace, NAME)) == "2.0", 30,
               "both starts in the operator's histogram")  # fmt: skip
    activator = next(p for p in kubelet.running() if "activator" in p.name)
    metrics = _get(f"{activator.base_url}/metrics")
    assert "embedfleet_activator_activations_total 1.0" in metrics, metrics
    assert 'embedfleet_activator_requests_total{outcome="forwarded"}' in metrics


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def _sample(metrics: str, series: str) -> str | None:
    """A series' value as exposed, None when it is not there."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.MULTILINE)
    return found.group(1) if found else None
