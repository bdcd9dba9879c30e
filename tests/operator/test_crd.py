"""The EmbeddingService CRD: the checked-in YAML is the generated one, the real apiserver
accepts it as structural, applies its defaults, and rejects invalid specs with clear messages."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from embedfleet_operator.crd import CRD_NAME, GROUP, PLURAL, VERSION, render
from tests.cluster.controlplane import LocalCluster
from tests.cluster.processes import wait_until

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "deploy" / "crd" / f"{CRD_NAME}.yaml"
SAMPLE: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "EmbeddingService",
    "metadata": {"name": "qwen3-4b"},
    "spec": {"model": {"name": "Qwen/Qwen3-Embedding-4B"}},
}


def test_checked_in_crd_is_generated_from_the_schema() -> None:
    assert CRD_FILE.read_text() == render(), "run: python -m embedfleet_operator.crd > " + str(
        CRD_FILE.relative_to(REPO)
    )


@pytest.fixture(scope="module")
def crd(cluster: LocalCluster) -> kubernetes.client.CustomObjectsApi:
    client = cluster.api_client()
    extensions = kubernetes.client.ApiextensionsV1Api(client)
    try:
        extensions.create_custom_resource_definition(yaml.safe_load(CRD_FILE.read_text()))
    except kubernetes.client.ApiException as error:
        if error.status != 409:
            raise

    def established() -> bool:
        status = extensions.read_custom_resource_definition(CRD_NAME).status
        return any(c.type == "Established" and c.status == "True" for c in status.conditions or [])

    wait_until(established, 30, "the CRD to be established")
    return kubernetes.client.CustomObjectsApi(client)


def create(api: kubernetes.client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> Any:
    return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


@pytest.mark.cluster
def test_minimal_spec_gets_the_documented_defaults(
    crd: kubernetes.client.CustomObjectsApi, namespace: str
) -> None:
    created = create(crd, namespace, SAMPLE)
    spec = created["spec"]
    assert spec["model"]["dtype"] == "auto"
    assert spec["resources"] == {"gpus": 1, "memory": "32Gi", "cpu": "4"}
    assert spec["engine"]["maxBatchTokens"] == 16384
    assert spec["autoscaling"] == {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 4,
        "targetGPUUtilizationPercent": 65,
        "idleTimeoutSeconds": 120,
        "scaleDownStabilizationSeconds": 300,
    }
    assert spec["service"] == {"type": "ClusterIP", "port": 8000}


def _with(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(SAMPLE)
    *parents, leaf = path.split(".")
    node = body["spec"]
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return body


_DELETE = object()


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("autoscaling.minReplicas", 5, "minReplicas must not exceed maxReplicas"),
        ("model.dtype", "int4", 'Unsupported value: "int4"'),
        (
            "autoscaling.targetTokensPerSecondPerReplica",
            -10,
            "should be greater than or equal to 1",
        ),
        ("autoscaling.targetGPUUtilizationPercent", 0, "should be greater than or equal to 1"),
        ("autoscaling.maxReplicas", 0, "should be greater than or equal to 1"),
        ("model", _DELETE, "spec.model: Required value"),
        ("model.name", "", "spec.model.name: Invalid value"),
        ("service.type", "ExternalName", 'Unsupported value: "ExternalName"'),
        ("model.cache", {"pvc": "models", "emptyDirSizeLimit": "10Gi"}, "either pvc or emptyDir"),
        ("resources.memory", "lots", 'spec.resources.memory: Invalid value: "lots"'),
        ("resources.cpu", "-2", 'spec.resources.cpu: Invalid value: "-2"'),
        ("resources.cpu", -2, "spec.resources.cpu"),
        ("model.cache", {"emptyDirSizeLimit": "50 GB"}, "spec.model.cache.emptyDirSizeLimit"),
        (
            "tolerations",
            [{"key": "gpu", "operator": "Sometimes"}],
            'Unsupported value: "Sometimes"',
        ),
        ("tolerations", [{"key": "gpu", "operator": "Exists", "value": "x"}], "takes no value"),
        ("tolerations", [{"operator": "Equal", "value": "x"}], "needs operator Exists"),
        ("tolerations", [{"key": "gpu", "tolerationSeconds": 30}], "needs effect NoExecute"),
        ("tolerations", [{"key": "no spaces", "operator": "Exists"}], "spec.tolerations[0].key"),
        ("priorityClassName", "High_Priority", "spec.priorityClassName: Invalid value"),
        ("model.cache", {"pvc": "Models"}, "spec.model.cache.pvc: Invalid value"),
        ("apiKeySecretRef", {"name": "keys", "key": "api key"}, "spec.apiKeySecretRef.key"),
        ("podLabels", {"team": "not a valid label value!"}, "spec.podLabels.team: Invalid value"),
        ("podLabels", {"team": "x" * 64}, "spec.podLabels.team: Too long"),
        ("podLabels", {"no spaces": "a"}, "keys must be an optional DNS prefix"),
        ("nodeSelector", {"gpu/": "h100"}, "keys must be an optional DNS prefix"),
        ("podAnnotations", {"-leading": "any value at all!"}, "keys must be an optional DNS"),
        ("model.prefetch", True, "prefetch needs cache.pvc"),
        (
            "model",
            {"name": "/opt/models/minilm", "prefetch": True, "cache": {"pvc": "models"}},
            "prefetch needs a hub id",
        ),
        ("model.hubEndpoint", "ftp://mirror.internal", "spec.model.hubEndpoint: Invalid value"),
        ("model.hubTokenSecret", {"key": "token"}, "spec.model.hubTokenSecret.name: Required"),
    ],
)
def test_invalid_specs_are_rejected_with_a_clear_message(
    crd: kubernetes.client.CustomObjectsApi, namespace: str, path: str, value: Any, message: str
) -> None:
    body = _with(path, value)
    body["metadata"]["name"] = "invalid"
    with pytest.raises(kubernetes.client.ApiException) as raised:
        create(crd, namespace, body)
    assert raised.value.status == 422
    assert message in json.loads(raised.value.body)["message"]


@pytest.mark.cluster
def test_an_explicit_autoscaling_block_must_name_a_target(
    crd: kubernetes.client.CustomObjectsApi, namespace: str
) -> None:
    body = _with("autoscaling", {"minReplicas": 1, "maxReplicas": 2})
    body["metadata"]["name"] = "no-target"
    with pytest.raises(kubernetes.client.ApiException) as raised:
        create(crd, namespace, body)
    assert "at least one autoscaling target is required" in raised.value.body
    tokens_only = _with("autoscaling", {"targetTokensPerSecondPerReplica": 5000})
    tokens_only["metadata"]["name"] = "tokens-only"
    created = create(crd, namespace, tokens_only)["spec"]["autoscaling"]
    assert "targetGPUUtilizationPercent" not in created
    assert (created["minReplicas"], created["maxReplicas"]) == (1, 4)


@pytest.mark.cluster
def test_labels_annotations_and_tolerations_accept_what_kubernetes_accepts(
    crd: kubernetes.client.CustomObjectsApi, namespace: str
) -> None:
    body = _with("podLabels", {"example.com/team": "search", "tier": "", "a.b_c-d": "X.y_z-9"})
    body["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    body["spec"]["podAnnotations"] = {"prometheus.io/scrape": "true, or any text at all"}
    body["spec"]["tolerations"] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Equal", "value": "yes", "effect": "NoExecute",
         "tolerationSeconds": 30},
    ]  # fmt: skip
    body["metadata"]["name"] = "labelled"
    assert create(crd, namespace, body)["spec"]["podLabels"]["example.com/team"] == "search"


@pytest.mark.cluster
def test_a_cache_pvc_is_accepted_and_prefetch_with_it(
    crd: kubernetes.client.CustomObjectsApi, namespace: str
) -> None:
    body = _with("model", {"name": "acme/embedder", "prefetch": True, "cache": {"pvc": "models"},
                           "hubTokenSecret": {"name": "hf"}})  # fmt: skip
    body["metadata"]["name"] = "prefetched"
    model = create(crd, namespace, body)["spec"]["model"]
    assert model["cache"] == {"pvc": "models"}  # no emptyDir default beside the pvc
    assert model["hubTokenSecret"] == {"name": "hf", "key": "token"}
