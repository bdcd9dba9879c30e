"""The operator through faults on the local control plane, each fault's measured recovery time in
its assertion message."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import pytest
import yaml

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from embedfleet_operator.operator_metrics import SCALE_DECISIONS
from tests.cluster.controlplane import LocalCluster
from tests.cluster.processes import free_loopback_port, wait_until
from tests.operator.operator_process import OperatorProcess, create_peering, install_crds

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
SAMPLE: dict[str, Any] = yaml.safe_load(
    (REPO / "deploy/samples/qwen3-embedding-4b.yaml").read_text()
)
TICK = 2
RESTART_FIRST_TICK_S = 10.0  # the target: first tick after the process starts


def decisions(metrics_url: str) -> float:
    """Autoscaling decisions this operator process has made (every tick makes one)."""
    try:
        exported = httpx.get(metrics_url, timeout=2).text
    except httpx.HTTPError:
        return 0.0  # not serving yet
    return sum(
        float(line.rpartition(" ")[2])
        for line in exported.splitlines()
        if line.startswith(SCALE_DECISIONS + "{")
    )


def start_operator(
    cluster: LocalCluster, namespace: str, log: Path, pod_id: str
) -> tuple[OperatorProcess, str]:
    port = free_loopback_port()
    process = OperatorProcess(
        cluster, namespace, log, "--autoscale-seconds", str(TICK),
        "--scrape-timeout-seconds", "1", "--metrics-address", f"127.0.0.1:{port}",
        env={"POD_ID": pod_id},
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}/metrics"


def test_a_killed_operator_restarted_in_its_pod_ticks_at_once(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    """A container restart (OOM, crash, liveness kill) keeps the pod's name, which the chart
    passes as kopf's peer identity: the new process knows the dead one's peering record as its
    own and does not wait the record's lifetime out (46.8 s measured without it)."""
    install_crds(cluster)
    create_peering(cluster, namespace)
    custom = kubernetes.client.CustomObjectsApi(cluster.api_client())
    first, first_url = start_operator(cluster, namespace, tmp_path / "first.log", "operator-0")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, SAMPLE)
    wait_until(lambda: decisions(first_url) > 0, 120, "the first operator's autoscaling ticks")
    first.kill()

    restarted, url = start_operator(cluster, namespace, tmp_path / "restarted.log", "operator-0")
    started = time.monotonic()
    try:
        wait_until(lambda: decisions(url) > 0, 90, "the restarted operator's first tick")
        took = time.monotonic() - started
        assert took <= RESTART_FIRST_TICK_S, (
            f"first tick {took:.1f}s after the restart, target {RESTART_FIRST_TICK_S:g}s"
        )
        print(f"first autoscaling tick {took:.1f}s after the restarted process started")
        assert "Pausing" not in restarted.log(), restarted.log()[-3000:]
    finally:
        assert restarted.stop() == 0
    assert "Traceback" not in restarted.log(), restarted.log()[-4000:]
