"""Pure builders: an EmbeddingService (the CR as a dict, defaults applied by the apiserver)
to the worker Deployment, Service and PodDisruptionBudget it owns. No I/O, no clients."""

from __future__ import annotations

import math
from typing import Any

from embedfleet_operator.crd import GROUP, KIND, VERSION

Manifest = dict[str, Any]

WORKER_PORT = 8000
MODEL_CACHE_PATH = "/models"
API_KEY_DIR = "/etc/embedfleet/api-key"
WORKER_UID = 1000
GPU_RESOURCE = "nvidia.com/gpu"
STARTUP_PROBE_PERIOD = 10
# Grace beyond the worker's drain: uvicorn shutdown and the engine thread join.
TERMINATION_MARGIN_SECONDS = 15
SELECTOR_LABEL = f"{GROUP}/service"


def selector_labels(name: str) -> dict[str, str]:
    return {SELECTOR_LABEL: name}


def common_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "embedfleet-worker",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "embedfleet",
        **selector_labels(name),
    }


def owner_reference(service: Manifest) -> Manifest:
    meta = service["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(service: Manifest, name: str | None = None) -> Manifest:
    meta = service["metadata"]
    return {
        "name": name or meta["name"],
        "namespace": meta["namespace"],
        "labels": common_labels(meta["name"]),
        "ownerReferences": [owner_reference(service)],
    }


def worker_environment(spec: Manifest) -> list[Manifest]:
    """Settings for `embedfleet-worker serve`, through its EMBEDFLEET_* variables."""
    model, engine = spec["model"], spec.get("engine", {})
    values: dict[str, Any] = {
        "EMBEDFLEET_MODEL": model["name"],
        "EMBEDFLEET_REVISION": model.get("revision"),
        "EMBEDFLEET_DTYPE": model.get("dtype", "auto"),
        "EMBEDFLEET_DEVICE": "cuda" if spec.get("resources", {}).get("gpus", 1) > 0 else "cpu",
        "EMBEDFLEET_HOST": "0.0.0.0",
        "EMBEDFLEET_PORT": WORKER_PORT,
        "EMBEDFLEET_MAX_BATCH_TOKENS": engine.get("maxBatchTokens"),
        "EMBEDFLEET_MAX_BATCH_SIZE": engine.get("maxBatchSize"),
        "EMBEDFLEET_MAX_INPUT_TOKENS": engine.get("maxInputTokens"),
        "EMBEDFLEET_MAX_QUEUE_TOKENS": engine.get("maxQueueTokens"),
        "EMBEDFLEET_MAX_INPUTS_PER_REQUEST": engine.get("maxInputsPerRequest"),
        "EMBEDFLEET_DEFAULT_INSTRUCTION": engine.get("defaultInstruction"),
        "EMBEDFLEET_DRAIN_TIMEOUT_SECONDS": engine.get("drainTimeoutSeconds"),
        "EMBEDFLEET_MAX_CONNECTION_AGE_SECONDS": engine.get("maxConnectionAgeSeconds"),
        "EMBEDFLEET_MAX_CONNECTION_REQUESTS": engine.get("maxConnectionRequests"),
        "EMBEDFLEET_SERVED_MODEL_NAME": model["name"],
        "EMBEDFLEET_MODEL_CACHE_DIR": MODEL_CACHE_PATH,
        "HF_HOME": MODEL_CACHE_PATH,
    }
    if "apiKeySecretRef" in spec:
        values["EMBEDFLEET_API_KEY_FILE"] = f"{API_KEY_DIR}/{spec['apiKeySecretRef']['key']}"
    return [{"name": k, "value": str(v)} for k, v in values.items() if v is not None]


def _resources(spec: Manifest) -> Manifest:
    wanted = spec.get("resources", {})
    requests = {"cpu": str(wanted.get("cpu", "4")), "memory": str(wanted.get("memory", "32Gi"))}
    limits = {"memory": requests["memory"]}
    gpus = int(wanted.get("gpus", 1))
    if gpus > 0:
        limits[GPU_RESOURCE] = str(gpus)
    return {"requests": requests, "limits": limits}


def _probes(spec: Manifest) -> Manifest:
    def http(path: str, **timing: int) -> Manifest:
        return {"httpGet": {"path": path, "port": "http"}, **timing}

    budget = int(spec.get("startupTimeoutSeconds", 1800))
    return {
        # Liveness and readiness wait until the model is loaded; a load slower than the
        # budget (download + load) restarts the pod.
        "startupProbe": http(
            "/ready",
            periodSeconds=STARTUP_PROBE_PERIOD,
            timeoutSeconds=5,
            failureThreshold=max(1, math.ceil(budget / STARTUP_PROBE_PERIOD)),
        ),
        "readinessProbe": http("/ready", periodSeconds=5, timeoutSeconds=5, failureThreshold=2),
        "livenessProbe": http("/health", periodSeconds=10, timeoutSeconds=5, failureThreshold=6),
    }


def _volumes(spec: Manifest) -> tuple[list[Manifest], list[Manifest]]:
    cache = spec["model"].get("cache", {})
    if "pvc" in cache:
        model_volume: Manifest = {
            "name": "models",
            "persistentVolumeClaim": {"claimName": cache["pvc"]},
        }
    else:
        model_volume = {
            "name": "models",
            "emptyDir": {"sizeLimit": str(cache.get("emptyDirSizeLimit", "50Gi"))},
        }
    volumes = [model_volume, {"name": "tmp", "emptyDir": {}}]
    mounts: list[Manifest] = [
        {"name": "models", "mountPath": MODEL_CACHE_PATH},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if "apiKeySecretRef" in spec:
        ref = spec["apiKeySecretRef"]
        volumes.append({"name": "api-key", "secret": {"secretName": ref["name"]}})
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    return volumes, mounts


def build_deployment(
    service: Manifest, *, worker_image: str, replicas: int | None = None
) -> Manifest:
    """The worker Deployment, running spec.image or else `worker_image` (the operator's
    setting). `replicas` is left out unless given: the autoscaler (or `spec.replicas` when
    autoscaling is off) owns that field, not the template apply."""
    spec, name = service["spec"], service["metadata"]["name"]
    volumes, mounts = _volumes(spec)
    container: Manifest = {
        "name": "worker",
        "image": spec.get("image") or worker_image,
        "imagePullPolicy": spec.get("imagePullPolicy", "IfNotPresent"),
        "command": ["embedfleet-worker", "serve"],
        "ports": [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        "env": worker_environment(spec),
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        **_probes(spec),
    }
    drain = int(spec.get("engine", {}).get("drainTimeoutSeconds", 30))
    pod_spec: Manifest = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": drain + TERMINATION_MARGIN_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    for field in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        if spec.get(field):
            pod_spec[field] = spec[field]
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(WORKER_PORT),
        "prometheus.io/path": "/metrics",
        **spec.get("podAnnotations", {}),
    }
    deployment_spec: Manifest = {
        "selector": {"matchLabels": selector_labels(name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "template": {
            "metadata": {
                "labels": {**spec.get("podLabels", {}), **common_labels(name)},
                "annotations": annotations,
            },
            "spec": pod_spec,
        },
    }
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(service),
        "spec": deployment_spec,
    }


def build_service(service: Manifest) -> Manifest:
    spec, name = service["spec"], service["metadata"]["name"]
    exposure = spec.get("service", {})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service),
        "spec": {
            "type": exposure.get("type", "ClusterIP"),
            "selector": selector_labels(name),
            "ports": [
                {
                    "name": "http",
                    "port": int(exposure.get("port", WORKER_PORT)),
                    "targetPort": "http",
                    "protocol": "TCP",
                }
            ],
        },
    }


def max_replicas(spec: Manifest) -> int:
    autoscaling = spec.get("autoscaling", {})
    if autoscaling.get("enabled", True):
        return int(autoscaling.get("maxReplicas", 4))
    return int(spec.get("replicas", 1))


def build_pdb(service: Manifest) -> Manifest | None:
    """At most one worker voluntarily evicted at a time; pointless with a single replica."""
    if max_replicas(service["spec"]) <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(service),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(service["metadata"]["name"])},
        },
    }


def endpoint_url(service: Manifest) -> str:
    meta, exposure = service["metadata"], service["spec"].get("service", {})
    port = int(exposure.get("port", WORKER_PORT))
    return f"http://{meta['name']}.{meta['namespace']}.svc:{port}/v1"


def replicas_to_set(spec: Manifest, current: int | None) -> int | None:
    """The replica count the operator must write now, or None to leave it alone. With
    autoscaling off `spec.replicas` rules; with it on, a new Deployment starts at
    max(minReplicas, 1) and a hand-edited count is clamped into [min, max] (the autoscaler
    moves it within that range)."""
    autoscaling = spec.get("autoscaling", {})
    if not autoscaling.get("enabled", True):
        wanted = int(spec.get("replicas", 1))
        return wanted if current != wanted else None
    low, high = int(autoscaling.get("minReplicas", 1)), int(autoscaling.get("maxReplicas", 4))
    if current is None:
        return max(low, 1) if high >= 1 else low
    clamped = min(max(current, low), high)
    return clamped if clamped != current else None
