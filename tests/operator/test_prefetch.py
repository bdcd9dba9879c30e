"""Models fetched once, end to end on the local control plane: the real operator creates the
prefetch Job, the real job controller runs it, the loopback kubelet runs its pod as the real
`embedfleet-worker prefetch`, which downloads a gated model over HTTP from a loopback hub with
the token from a Secret into the cache PVC; then a real worker loads it offline and answers
through the Service. With a wrong token the Job fails with the hub's 401 in status and a
Warning, and no worker starts. The token appears in no log, Event, status or object."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import openai
import pytest

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from tests.cluster.controlplane import LocalCluster
from tests.cluster.hub import HubRepo, LoopbackHub
from tests.cluster.kubelet import REAL_PROCESS_ANNOTATION, LoopbackKubelet
from tests.cluster.processes import ComponentDied, wait_until
from tests.cluster.service_proxy import ServiceProxy
from tests.modelzoo import minilm_dir
from tests.operator.operator_process import (
    OperatorProcess,
    create_peering,
    install_crds,
    service_warnings,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MODEL = "acme/gated-minilm"
TOKEN = f"hf_loopback_{uuid.uuid4().hex}"


@dataclass
class Fleet:
    cluster: LocalCluster
    namespace: str
    hub: LoopbackHub
    operator: OperatorProcess
    kubelet: LoopbackKubelet
    pods_dir: Path

    @property
    def api(self) -> kubernetes.client.ApiClient:
        return self.cluster.api_client()

    def create(self, name: str, token: str) -> None:
        """The token Secret, a cache PVC bound to a PV, and the EmbeddingService."""
        core = kubernetes.client.CoreV1Api(self.api)
        core.create_namespaced_secret(self.namespace, {
            "metadata": {"name": f"{name}-hf"}, "stringData": {"token": token}})  # fmt: skip
        volume = f"{self.namespace}-{name}"[:63]
        core.create_persistent_volume({
            "metadata": {"name": volume},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                     "storageClassName": "", "hostPath": {"path": f"/tmp/{volume}"},
                     "persistentVolumeReclaimPolicy": "Delete"},
        })  # fmt: skip
        core.create_namespaced_persistent_volume_claim(self.namespace, {
            "metadata": {"name": f"{name}-models"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                     "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}},
        })  # fmt: skip
        spec = {
            "model": {"name": MODEL, "prefetch": True, "cache": {"pvc": f"{name}-models"},
                      "hubTokenSecret": {"name": f"{name}-hf"}, "hubEndpoint": self.hub.url},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
            "autoscaling": {"enabled": False}, "replicas": 1,
            "podAnnotations": {REAL_PROCESS_ANNOTATION: "true"},
        }  # fmt: skip
        kubernetes.client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL,
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EmbeddingService",
             "metadata": {"name": name}, "spec": spec},
        )  # fmt: skip

    def service(self, name: str) -> dict[str, Any]:
        custom = kubernetes.client.CustomObjectsApi(self.api)
        return dict(
            custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        )

    def jobs(self, name: str) -> list[Any]:
        batch = kubernetes.client.BatchV1Api(self.api)
        selector = f"embedfleet.dev/prefetch={name}"
        return list(batch.list_namespaced_job(self.namespace, label_selector=selector).items)

    def everything_written(self) -> str:
        """Every log, Event and object of the namespace's fleet, as text."""
        api, ns = self.api, self.namespace
        core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
        batch = kubernetes.client.BatchV1Api(api)
        custom = kubernetes.client.CustomObjectsApi(api)
        objects = [
            custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL),
            api.sanitize_for_serialization(core.list_namespaced_event(ns)),
            api.sanitize_for_serialization(batch.list_namespaced_job(ns)),
            api.sanitize_for_serialization(apps.list_namespaced_deployment(ns)),
            api.sanitize_for_serialization(core.list_namespaced_pod(ns)),
        ]
        files = [p.read_text(errors="replace") for p in self.pods_dir.rglob("*")
                 if p.is_file() and p.suffix in (".log", ".env")]  # fmt: skip
        return "\n".join([self.operator.log(), *files, json.dumps(objects, default=str)])


@pytest.fixture
def fleet(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[Fleet]:
    install_crds(cluster)
    create_peering(cluster, namespace)
    repos = {MODEL: HubRepo(MODEL, minilm_dir(), gated=True)}
    operator = OperatorProcess(cluster, namespace, tmp_path / "operator.log",
                               "--resync-seconds", "5")  # fmt: skip
    kubelet = LoopbackKubelet(cluster.api_client(), namespace, tmp_path / "pods")
    with LoopbackHub(repos, token=TOKEN) as hub, kubelet:
        try:
            yield Fleet(cluster, namespace, hub, operator, kubelet, tmp_path / "pods")
        finally:
            assert operator.stop() == 0
            core = kubernetes.client.CoreV1Api(cluster.api_client())
            for volume in core.list_persistent_volume().items:
                if volume.metadata.name.startswith(namespace[:40]):
                    core.delete_persistent_volume(volume.metadata.name)
    assert not kubelet.errors, kubelet.errors
    assert "Traceback" not in operator.log(), operator.log()[-4000:]


def test_a_gated_model_is_fetched_once_and_workers_load_it_offline(fleet: Fleet) -> None:
    name = "minilm"
    fleet.create(name, TOKEN)
    apps = kubernetes.client.AppsV1Api(fleet.api)

    def prefetched() -> bool:
        return bool(fleet.service(name).get("status", {}).get("prefetch", {}).get("phase")
                    == "Succeeded")  # fmt: skip

    def deployment_absent() -> bool:
        try:
            apps.read_namespaced_deployment(name, fleet.namespace)
        except kubernetes.client.ApiException as error:
            return error.status == 404
        return False

    wait_until(lambda: len(fleet.jobs(name)) == 1, 60, "the prefetch Job")
    held = deployment_absent()  # the Job exists; its fetch takes seconds at least
    wait_until(prefetched, 180, "status.prefetch Succeeded")
    fetched = len(fleet.hub.requests)
    (job,) = fleet.jobs(name)
    assert job.status.succeeded == 1
    prefetch = fleet.service(name)["status"]["prefetch"]
    assert prefetch["job"] == job.metadata.name
    assert prefetch["model"] == MODEL
    assert prefetch["message"].startswith("prefetched ")
    assert "files" in prefetch["message"]
    assert [r for r in fleet.hub.requests if r.path.endswith("model.safetensors")]
    assert all(r.authorized for r in fleet.hub.requests if r.status == 200)

    def ready() -> bool:
        if failed := fleet.kubelet.failed_loads():
            raise ComponentDied(f"a worker could not load its model: {failed[0]}")
        return int(apps.read_namespaced_deployment(name, fleet.namespace).status.ready_replicas
                   or 0) == 1  # fmt: skip

    wait_until(ready, 180, "a worker ready on the prefetched model")
    deployment = apps.read_namespaced_deployment(name, fleet.namespace)
    assert held or deployment.metadata.creation_timestamp >= job.status.completion_time
    env = {v.name: v for v in deployment.spec.template.spec.containers[0].env}
    assert env["EMBEDFLEET_OFFLINE"].value == "true"
    assert "HF_TOKEN" not in env
    (variable,) = [v for v in job.spec.template.spec.containers[0].env if v.name == "HF_TOKEN"]
    assert variable.value is None
    assert variable.value_from.secret_key_ref.name == f"{name}-hf"

    with (
        ServiceProxy(fleet.api, fleet.namespace, name) as proxy,
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as client,
    ):
        answer = client.embeddings.create(model=MODEL, input="fetched once, loaded offline")
    assert len(answer.data[0].embedding) == 384
    assert len(fleet.hub.requests) == fetched  # the worker never asked the hub
    ready_status = fleet.service(name)["status"]
    assert {c["type"]: c["status"] for c in ready_status["conditions"]}["Ready"] == "True"
    assert TOKEN not in fleet.everything_written()


def test_a_wrong_token_fails_the_prefetch_with_the_401_and_starts_no_worker(
    fleet: Fleet,
) -> None:
    name = "wrong-token"
    wrong = f"hf_wrong_{uuid.uuid4().hex}"
    fleet.create(name, wrong)

    def failed() -> bool:
        status = fleet.service(name).get("status", {})
        ready = {c["type"]: c for c in status.get("conditions", [])}.get("Ready", {})
        return bool(status.get("prefetch", {}).get("phase") == "Failed"
                    and ready.get("reason") == "PrefetchFailed")  # fmt: skip

    wait_until(failed, 180, "status.prefetch Failed")
    wait_until(lambda: "401" in fleet.service(name)["status"]["prefetch"]["message"], 30,
               "the hub's 401 in status")  # fmt: skip
    status = fleet.service(name)["status"]
    message = status["prefetch"]["message"]
    assert "Invalid credentials" in message, message
    assert "hubTokenSecret" in message, message
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "PrefetchFailed")
    wait_until(lambda: service_warnings(fleet.cluster, fleet.namespace, "PrefetchFailed"), 30,
               "a PrefetchFailed Warning")  # fmt: skip
    (job,) = fleet.jobs(name)
    assert job.status.failed == 1  # refused at once (podFailurePolicy), not retried
    apps = kubernetes.client.AppsV1Api(fleet.api)
    assert not apps.list_namespaced_deployment(fleet.namespace).items  # no worker to crash-loop
    assert not [p for p in fleet.kubelet.running() if p.name.startswith(f"{name}-")
                and "prefetch" not in p.name]  # fmt: skip
    assert [r for r in fleet.hub.requests if r.status == 401]
    written = fleet.everything_written()
    assert wrong not in written
    assert TOKEN not in written
