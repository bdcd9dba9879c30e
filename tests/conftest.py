"""Shared fixtures. The `cluster` fixture starts one real local control plane per test session
(see tests/cluster/controlplane.py) and tears it down with nothing left running."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.cluster.controlplane import LocalCluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    # Imported here: the GPU machine runs tests/gpu without the Kubernetes test dependencies.
    from tests.cluster.controlplane import LocalCluster

    workdir = Path(tempfile.mkdtemp(prefix="embedfleet-k8s-"))
    local = LocalCluster(workdir)
    local.start()
    try:
        yield local
    finally:
        local.stop()
        leftovers = local.running_pids()
        if os.environ.get("EMBEDFLEET_KEEP_CLUSTER_LOGS"):
            print(f"control-plane logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        assert not leftovers, f"control-plane processes still running: {leftovers}"


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh Namespace per test, deleted afterwards."""
    import kubernetes

    from tests.cluster.processes import wait_until

    core = kubernetes.client.CoreV1Api(cluster.api_client())
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"  # unique: parametrized names share a prefix
    core.create_namespace({"metadata": {"name": name}})
    wait_until(lambda: core.read_namespaced_service_account("default", name), 30, "default SA")
    yield name
    core.delete_namespace(name)
