"""The autoscaler end to end on the local control plane: real `embedfleet-worker` processes
(MiniLM on CPU) run for the kwok pods on their 127.x IPs (tests/cluster/kubelet.py), traffic
from one keep-alive openai client goes through the Service's ClusterIP
(tests/cluster/service_proxy.py, random per connection like kube-proxy), and the operator
scrapes the workers, scales up under load, spreads the client's pooled connections over the
new workers, rides out a killed worker and returns to minReplicas once the fleet has been
idle."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import pytest

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from embedfleet_operator.operator_metrics import SCALE_DECISIONS, SCALE_EVENTS
from tests.cluster.controlplane import LocalCluster
from tests.cluster.kubelet import REAL_PROCESS_ANNOTATION, LoopbackKubelet
from tests.cluster.processes import ComponentDied, free_loopback_port, wait_until
from tests.cluster.service_proxy import ServiceProxy
from tests.cluster.traffic import Traffic, served_by
from tests.modelzoo import minilm_dir
from tests.operator.operator_process import OperatorProcess, create_peering, install_crds

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAME = "minilm"
TICK = 2
IDLE = 8
STABILIZATION = 10
BALANCE_WINDOW_S = 30
FAIR_SHARE = 0.6  # every Ready worker serves at least this part of an even share


def service_manifest() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EmbeddingService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"name": str(minilm_dir())},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
            "engine": {"maxBatchTokens": 2048},
            "podAnnotations": {REAL_PROCESS_ANNOTATION: "true"},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "targetRequestsPerSecondPerReplica": 3,
                "idleTimeoutSeconds": IDLE,
                "scaleDownStabilizationSeconds": STABILIZATION,
            },
        },
    }


@pytest.fixture
def fleet(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, LoopbackKubelet, str]]:
    install_crds(cluster)
    create_peering(cluster, namespace)
    metrics_port = free_loopback_port()
    operator = OperatorProcess(
        cluster, namespace, tmp_path / "operator.log",
        "--resync-seconds", "5", "--autoscale-seconds", str(TICK),
        "--scrape-timeout-seconds", "1", "--metrics-address", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    kubelet = LoopbackKubelet(cluster.api_client(), namespace, tmp_path / "pods")
    with kubelet:
        try:
            yield operator, kubelet, f"http://127.0.0.1:{metrics_port}/metrics"
        finally:
            assert operator.stop() == 0
    assert not kubelet.errors, kubelet.errors
    assert all(p.process is None or p.process.poll() is not None for p in kubelet.finished)
    assert "Traceback" not in operator.log(), operator.log()[-4000:]


def test_scales_up_under_load_and_back_to_min_when_idle(
    cluster: LocalCluster, namespace: str, fleet: tuple[OperatorProcess, LoopbackKubelet, str]
) -> None:
    _, kubelet, operator_metrics_url = fleet
    api = cluster.api_client()
    custom = kubernetes.client.CustomObjectsApi(api)
    apps = kubernetes.client.AppsV1Api(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, service_manifest())

    def status() -> dict[str, Any]:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
        return dict(body.get("status") or {})

    def ready_workers() -> int:
        if failed := kubelet.failed_loads():
            raise ComponentDied(f"a worker could not load its model: {failed[0]}")
        return int(status().get("readyReplicas") or 0)

    def replicas() -> int:
        return int(apps.read_namespaced_deployment(NAME, namespace).spec.replicas or 0)

    def status_caught_up() -> dict[str, Any]:
        """Status once it describes the current scale: the autoscaler writes replicas first
        and status right after, so a read in between sees the previous decision."""
        wait_until(lambda: status().get("desiredReplicas") == replicas(), 30, "status current")
        return status()

    wait_until(lambda: ready_workers() == 1, 180, "the first real worker ready")
    assert replicas() == 1

    # Load: 40 requests/s against a target of 3 per replica wants the maximum, 4 replicas.
    # One openai client, 8 threads, its default keep-alive pool, no retries: what users run.
    seen: list[int] = []
    watching = threading.Event()

    def watch_replicas() -> None:
        while not watching.is_set():
            with contextlib.suppress(Exception):  # the cluster may be going away after a failure
                seen.append(replicas())
            watching.wait(0.5)

    watcher = threading.Thread(target=watch_replicas, daemon=True)
    with (
        ServiceProxy(api, namespace, NAME) as proxy,
        Traffic(proxy.url, rate=40, model=str(minilm_dir())) as load,
    ):
        watcher.start()
        started = time.monotonic()
        try:
            wait_until(lambda: replicas() >= 3, 8 * TICK + 30, "a scale-up under load")
        except TimeoutError as error:
            raise AssertionError(
                f"{error}; load ok={load.ok} failed={load.failed[:3]}; proxy endpoints="
                f"{proxy.endpoints} connections={proxy.connections}; status={status()}"
            ) from error
        scale_up_after = time.monotonic() - started
        first = status_caught_up()
        assert first["lastScaleReason"] in {
            "RequestsPerSecondAboveTarget", "ScaleUpRateLimited", "QueueGrowing"
        }, first  # fmt: skip

        # Balance: from the moment the last scaled-up worker is Ready (the Service's endpoints
        # list it), every Ready worker takes its share of the pooled client's requests.
        def all_in_endpoints() -> bool:
            ready_workers()  # raises if a worker could not load its model
            return len(proxy.endpoints) == replicas() >= 3

        wait_until(all_in_endpoints, 240, "the new workers ready")
        all_ready = time.monotonic()
        pool = {p.name: p.base_url for p in kubelet.running()}
        before = served_by(pool)
        time.sleep(BALANCE_WINDOW_S)
        window = {n: c - before[n] for n, c in served_by(pool).items()}
        # The same fleet throughout: nobody scaled, restarted or left in the window.
        assert {p.name for p in kubelet.running()} == set(pool), (kubelet.running(), pool)
        assert replicas() == len(pool), (replicas(), pool)
        even = sum(window.values()) / len(window)
        failed_so_far = load.failures_before(all_ready + BALANCE_WINDOW_S)
        assert not failed_so_far, (
            [(round(f.sent, 3), f.error) for f in failed_so_far[:5]],
            {"proxy refused": proxy.refused[:5],
             "readiness": {p.name: p.history[-6:] for p in kubelet.running()}},
        )  # fmt: skip
        assert all(count >= FAIR_SHARE * even for count in window.values()), (
            f"requests per worker in the {BALANCE_WINDOW_S}s after all were Ready: {window}"
        )

        # Kill one worker's process mid-run: its pod turns unready, is restarted, and the
        # fleet must never shrink for it.
        victim = kubelet.running()[0]
        killed_at = time.monotonic()
        kubelet.kill(victim.name)
        wait_until(lambda: victim.restarts >= 1 and victim.ready, 180, "the killed worker back")
        time.sleep(4 * TICK)
        live = status()
        assert live["metrics"]["requestsPerSecond"] > 0, live
        assert live["metrics"]["reportingWorkers"] >= 1, live
        table = subprocess.run(
            [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.admin_kubeconfig),
             "-n", namespace, "get", "embsvc", NAME, "-o", "wide"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        header, row = (line.split() for line in table.splitlines()[:2])
        assert float(row[header.index("RPS")]) > 0, table
        during_load = list(seen)

    assert all(b >= a for a, b in itertools.pairwise(during_load)), during_load
    # Lost requests: none before the kill; after it, only those the killed worker held (in
    # flight, or sent on its pooled connections before the client saw them close).
    assert load.ok > 100, (load.ok, load.failed[:5])
    assert not load.failures_before(killed_at), load.failed[:5]
    assert len(load.failed) <= 10, load.failed[:10]

    # Idle: back to minReplicas through the targets' scale-down (with minReplicas 1 the idle
    # rule, the way to zero, stays out), never before the stabilisation window has passed.
    idle_started = time.monotonic()
    wait_until(lambda: replicas() == 1, STABILIZATION + 10 * TICK + 30, "scale-down to minReplicas")
    idle_after = time.monotonic() - idle_started
    watching.set()
    watcher.join(10)
    final = status_caught_up()
    assert final["lastScaleReason"] in {"RequestsPerSecondBelowTarget", "ScaleDownStabilized"}
    assert idle_after >= STABILIZATION - TICK, idle_after  # the last loaded tick: <= TICK before
    conditions = {c["type"]: c for c in final["conditions"]}
    assert conditions["ScalingActive"]["status"] == "True", conditions
    assert conditions["ScalingLimited"]["status"] == "True", conditions  # at minReplicas
    assert {"Ready", "Progressing", "Degraded"} <= set(conditions), conditions

    events = (
        kubernetes.client.CoreV1Api(api)
        .list_namespaced_event(namespace, field_selector="involvedObject.kind=EmbeddingService")
        .items
    )
    reasons = [e.reason for e in events]
    assert "ScaledUp" in reasons, reasons
    assert "ScaledDown" in reasons, reasons
    exported = httpx.get(operator_metrics_url, timeout=5).text
    assert f'{SCALE_EVENTS}{{direction="up",namespace="{namespace}",service="{NAME}"}}' in exported
    assert SCALE_DECISIONS in exported
    print(
        f"scale-up after {scale_up_after:.1f}s of load, idle scale-down after {idle_after:.1f}s; "
        f"{load.ok} requests ok, {len(load.failed)} failed; requests per worker in the "
        f"{BALANCE_WINDOW_S}s after all {len(window)} were Ready: {window}"
    )
