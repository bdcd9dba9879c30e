"""Table-driven tests of the pure resource builders."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from embedfleet_operator.resources import (
    build_activator,
    build_activator_account,
    build_deployment,
    build_kubernetes_service,
    build_pdb,
    endpoint_url,
    worker_environment,
)
from embedfleet_operator.spec import parse_service, parse_spec

BASE: dict[str, Any] = {
    "apiVersion": "embedfleet.dev/v1alpha1",
    "kind": "EmbeddingService",
    "metadata": {"name": "qwen3-4b", "namespace": "ml", "uid": "u-1"},
    "spec": {
        "model": {"name": "Qwen/Qwen3-Embedding-4B", "dtype": "bfloat16"},
        "image": "registry.local/worker:1",
        "resources": {"gpus": 1, "memory": "32Gi", "cpu": "4"},
        "engine": {"maxBatchTokens": 16384, "drainTimeoutSeconds": 30},
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4},
        "startupTimeoutSeconds": 1800,
        "service": {"type": "ClusterIP", "port": 8000},
    },
}


OPERATORS_IMAGE = "registry.example.com/ml/worker:0.1.0"  # the operator's --worker-image


def build(service: dict[str, Any], replicas: int | None = None) -> dict[str, Any]:
    return build_deployment(parse_service(service), worker_image=OPERATORS_IMAGE, replicas=replicas)


def service_with(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    body["spec"].update(spec)
    return body


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return result


def env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment)["env"]}


def test_the_image_is_the_specs_or_else_the_operators() -> None:
    assert container(build(BASE))["image"] == "registry.local/worker:1"
    unset = copy.deepcopy(BASE)
    del unset["spec"]["image"]
    assert container(build(unset))["image"] == OPERATORS_IMAGE


def test_deployment_shape() -> None:
    deployment = build(BASE)
    pod = deployment["spec"]["template"]["spec"]
    worker = container(deployment)
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it
    assert deployment["metadata"]["ownerReferences"][0] == {
        "apiVersion": "embedfleet.dev/v1alpha1",
        "kind": "EmbeddingService",
        "name": "qwen3-4b",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"
    assert (
        worker["startupProbe"]["failureThreshold"] * worker["startupProbe"]["periodSeconds"] >= 1800
    )
    assert pod["terminationGracePeriodSeconds"] > 30
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert env(deployment)["EMBEDFLEET_MODEL"] == "Qwen/Qwen3-Embedding-4B"
    assert env(deployment)["EMBEDFLEET_DTYPE"] == "bfloat16"
    assert env(deployment)["EMBEDFLEET_DEVICE"] == "cuda"


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        ({"replicas": 3}, lambda d: "replicas" not in d["spec"]),
        ({"resources": {"gpus": 0, "memory": "2Gi", "cpu": "1"}},
         lambda d: "nvidia.com/gpu" not in container(d)["resources"]["limits"]
         and env(d)["EMBEDFLEET_DEVICE"] == "cpu"),
        ({"startupTimeoutSeconds": 95},
         lambda d: container(d)["startupProbe"]["failureThreshold"] == 10),
        ({"engine": {"drainTimeoutSeconds": 120}},
         lambda d: d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 135),
        ({"apiKeySecretRef": {"name": "keys", "key": "token"}},
         lambda d: env(d)["EMBEDFLEET_API_KEY_FILE"] == "/etc/embedfleet/api-key/token"
         and {"name": "api-key", "secret": {"secretName": "keys"}}
         in d["spec"]["template"]["spec"]["volumes"]),
        ({"model": {"name": "m", "cache": {"pvc": "model-cache"}}},
         lambda d: d["spec"]["template"]["spec"]["volumes"][0]
         == {"name": "models", "persistentVolumeClaim": {"claimName": "model-cache"}}),
        ({"nodeSelector": {"gpu": "h100"}, "priorityClassName": "high"},
         lambda d: d["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "h100"}
         and d["spec"]["template"]["spec"]["priorityClassName"] == "high"),
        ({"podLabels": {"embedfleet.dev/service": "hijack", "team": "search"}},
         lambda d: d["spec"]["template"]["metadata"]["labels"]["embedfleet.dev/service"]
         == "qwen3-4b" and d["spec"]["template"]["metadata"]["labels"]["team"] == "search"),
        ({"engine": {"defaultInstruction": "Retrieve passages"}},
         lambda d: env(d)["EMBEDFLEET_DEFAULT_INSTRUCTION"] == "Retrieve passages"),
        ({"engine": {"maxConnectionAgeSeconds": 2.5, "maxConnectionRequests": 0}},
         lambda d: env(d)["EMBEDFLEET_MAX_CONNECTION_AGE_SECONDS"] == "2.5"
         and env(d)["EMBEDFLEET_MAX_CONNECTION_REQUESTS"] == "0"),
    ],
)  # fmt: skip
def test_deployment_variants(spec: dict[str, Any], check: Any) -> None:
    assert check(build(service_with(**spec)))


def test_explicit_replicas_are_set_when_given() -> None:
    assert build(BASE, replicas=2)["spec"]["replicas"] == 2


def test_service_and_endpoint() -> None:
    service = build_kubernetes_service(
        parse_service(service_with(service={"type": "NodePort", "port": 9000}))
    )
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0] == {
        "name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"
    }  # fmt: skip
    assert service["spec"]["selector"] == {"embedfleet.dev/service": "qwen3-4b"}
    assert endpoint_url(parse_service(BASE)) == "http://qwen3-4b.ml.svc:8000/v1"


@pytest.mark.parametrize(
    ("spec", "has_pdb"),
    [
        ({}, True),
        ({"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 1}}, False),
        ({"autoscaling": {"enabled": False}, "replicas": 1}, False),
        ({"autoscaling": {"enabled": False}, "replicas": 3}, True),
    ],
)
def test_pdb_only_when_more_than_one_replica_is_allowed(
    spec: dict[str, Any], has_pdb: bool
) -> None:
    pdb = build_pdb(parse_service(service_with(**spec)))
    assert (pdb is not None) == has_pdb
    if pdb is not None:
        assert pdb["spec"]["maxUnavailable"] == 1


def test_unset_engine_knobs_are_not_passed() -> None:
    names = {e["name"] for e in worker_environment(parse_spec({"model": {"name": "m"}}))}
    assert "EMBEDFLEET_MAX_INPUT_TOKENS" not in names
    assert "EMBEDFLEET_DEFAULT_INSTRUCTION" not in names


@pytest.mark.parametrize(
    ("engine", "age", "requests"),
    [({}, 5.0, 4), ({"maxConnectionAgeSeconds": 0, "maxConnectionRequests": 0}, 0.0, 0),
     ({"maxConnectionAgeSeconds": 2.5, "maxConnectionRequests": 100}, 2.5, 100)],
)  # fmt: skip
def test_engine_settings_reach_the_worker_through_its_environment(
    engine: dict[str, Any], age: float, requests: int
) -> None:
    """The Deployment's env, read by the worker's own settings parser, as the pod would."""
    from embedfleet_worker.settings import parse_settings

    settings = parse_settings([], environ=env(build(service_with(engine=engine))))
    assert settings.max_connection_age_seconds == age
    assert settings.max_connection_requests == requests
    assert settings.max_batch_tokens == engine.get("maxBatchTokens", 16384)


SCALES_TO_ZERO = {"enabled": True, "minReplicas": 0, "maxReplicas": 2}


def activator_pod(body: dict[str, Any]) -> dict[str, Any]:
    built = build_activator(parse_service(body), image="op:1", workers_address="10.0.0.1:8000")
    result: dict[str, Any] = built["spec"]["template"]["spec"]
    return result


@pytest.mark.parametrize(
    ("check", "why"),
    [
        (lambda a, p: a["kind"] == "ServiceAccount"
         and a["metadata"]["name"] == "qwen3-4b-activator" and a["metadata"]["namespace"] == "ml",
         "one account per service, named after it"),
        (lambda a, p: a["metadata"]["ownerReferences"][0]["uid"] == "u-1"
         and a["metadata"]["ownerReferences"][0]["controller"] is True,
         "owned by the EmbeddingService: the garbage collector removes it, no delete verb"),
        (lambda a, p: a["automountServiceAccountToken"] is False
         and p["automountServiceAccountToken"] is False, "no token, on the account and the pod"),
        (lambda a, p: p["serviceAccountName"] == a["metadata"]["name"],
         "the activator's pods run as that account, not the namespace's default"),
        (lambda a, p: a["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "embedfleet",
         "labelled, so the operator's label-filtered cache sees it"),
        (lambda a, p: set(a) == {"apiVersion", "kind", "metadata", "automountServiceAccountToken"},
         "no secrets or imagePullSecrets listed: nothing to read with it"),
        (lambda a, p: p["securityContext"]["runAsNonRoot"] is True
         and p["securityContext"]["runAsUser"] == 1000
         and p["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False,
         "non-root"),
    ],
)  # fmt: skip
def test_the_activators_own_account(check: Any, why: str) -> None:
    body = service_with(autoscaling=SCALES_TO_ZERO)
    assert check(build_activator_account(parse_service(body)), activator_pod(body)), why
