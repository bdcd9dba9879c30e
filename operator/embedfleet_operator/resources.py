"""Pure builders: an EmbeddingService (typed, spec.py) to the worker Deployment, the Kubernetes
Service and the PodDisruptionBudget it owns. No I/O, no clients."""

from __future__ import annotations

import math
from typing import Any

from embedfleet_operator.crd import GROUP, KIND, VERSION
from embedfleet_operator.hub import hub_environment, prefetches
from embedfleet_operator.spec import EmbeddingService, EmbeddingServiceSpec

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
ACTIVATOR_LABEL = f"{GROUP}/activator"  # on a scale-to-zero service's activator pods only
ACTIVATOR_PORT = 8000
ACTIVATOR_UID = 1000  # the operator image's non-root user (Dockerfile.operator)
# Every object the operator owns carries this label: the caches (cache.py) watch only these.
MANAGED_BY_LABELS = {"app.kubernetes.io/managed-by": "embedfleet"}
FIELD_MANAGER = "embedfleet"  # server-side apply of the workers' objects
# Replicas get their own manager so template applies never fight the scaler over them.
REPLICAS_MANAGER = "embedfleet-replicas"


def selector_labels(name: str) -> dict[str, str]:
    return {SELECTOR_LABEL: name}


def label_selector(name: str) -> str:
    """The workers' label selector as the API's `labelSelector` query and status.selector."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def common_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "embedfleet-worker",
        "app.kubernetes.io/instance": name,
        **MANAGED_BY_LABELS,
        **selector_labels(name),
    }


def owner_reference(service: EmbeddingService) -> Manifest:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": service.name,
        "uid": service.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(service: EmbeddingService) -> Manifest:
    return {
        "name": service.name,
        "namespace": service.namespace,
        "labels": common_labels(service.name),
        "ownerReferences": [owner_reference(service)],
    }


def worker_environment(spec: EmbeddingServiceSpec) -> list[Manifest]:
    """Settings for `embedfleet-worker serve`, through its EMBEDFLEET_* variables."""
    model, engine = spec.model, spec.engine
    values: dict[str, Any] = {
        "EMBEDFLEET_MODEL": model.name,
        "EMBEDFLEET_REVISION": model.revision,
        "EMBEDFLEET_DTYPE": model.dtype,
        "EMBEDFLEET_TASK": model.task,
        "EMBEDFLEET_DEVICE": "cuda" if spec.resources.gpus > 0 else "cpu",
        "EMBEDFLEET_HOST": "0.0.0.0",
        "EMBEDFLEET_PORT": WORKER_PORT,
        "EMBEDFLEET_MAX_BATCH_TOKENS": engine.max_batch_tokens,
        "EMBEDFLEET_MAX_BATCH_SIZE": engine.max_batch_size,
        "EMBEDFLEET_MAX_INPUT_TOKENS": engine.max_input_tokens,
        "EMBEDFLEET_MAX_QUEUE_TOKENS": engine.max_queue_tokens,
        "EMBEDFLEET_MAX_INPUTS_PER_REQUEST": engine.max_inputs_per_request,
        "EMBEDFLEET_DEFAULT_INSTRUCTION": engine.default_instruction,
        "EMBEDFLEET_DRAIN_TIMEOUT_SECONDS": engine.drain_timeout_seconds,
        "EMBEDFLEET_MAX_CONNECTION_AGE_SECONDS": engine.max_connection_age_seconds,
        "EMBEDFLEET_MAX_CONNECTION_REQUESTS": engine.max_connection_requests,
        "EMBEDFLEET_SERVED_MODEL_NAME": model.name,
        "EMBEDFLEET_MODEL_CACHE_DIR": MODEL_CACHE_PATH,
        "HF_HOME": MODEL_CACHE_PATH,
        # torch.compile's and Triton's caches on the model cache volume, not the pod's /tmp:
        # a restarted worker, and every pod sharing a cache PVC, reuses the kernels compiled
        # once (4B on an H200: compilation 14.2 s cold, 5.6-6.0 s warm; BENCHMARKS.md).
        "TORCHINDUCTOR_CACHE_DIR": f"{MODEL_CACHE_PATH}/.compile-cache/inductor",
        "TRITON_CACHE_DIR": f"{MODEL_CACHE_PATH}/.compile-cache/triton",
        # The tokenizer as built, beside them (most of a 4B worker's start otherwise).
        "EMBEDFLEET_TOKENIZER_CACHE_DIR": f"{MODEL_CACHE_PATH}/.compile-cache/tokenizers",
    }
    if spec.api_key_secret_ref is not None:
        values["EMBEDFLEET_API_KEY_FILE"] = f"{API_KEY_DIR}/{spec.api_key_secret_ref.key}"
    return [{"name": k, "value": str(v)} for k, v in values.items() if v is not None]


def _resources(spec: EmbeddingServiceSpec) -> Manifest:
    wanted = spec.resources
    requests = {"cpu": wanted.cpu, "memory": wanted.memory}
    limits = {"memory": requests["memory"]}
    if wanted.gpus > 0:
        limits[GPU_RESOURCE] = str(wanted.gpus)
    return {"requests": requests, "limits": limits}


def _probes(spec: EmbeddingServiceSpec) -> Manifest:
    def http(path: str, **timing: int) -> Manifest:
        return {"httpGet": {"path": path, "port": "http"}, **timing}

    budget = spec.startup_timeout_seconds
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


def _volumes(spec: EmbeddingServiceSpec) -> tuple[list[Manifest], list[Manifest]]:
    cache = spec.model.cache
    if cache.pvc is not None:
        model_volume: Manifest = {
            "name": "models",
            "persistentVolumeClaim": {"claimName": cache.pvc},
        }
    else:
        model_volume = {"name": "models", "emptyDir": {"sizeLimit": cache.empty_dir_size_limit}}
    volumes = [model_volume, {"name": "tmp", "emptyDir": {}}]
    mounts: list[Manifest] = [
        {"name": "models", "mountPath": MODEL_CACHE_PATH},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if spec.api_key_secret_ref is not None:
        ref = spec.api_key_secret_ref
        volumes.append({"name": "api-key", "secret": {"secretName": ref.name}})
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    return volumes, mounts


def worker_pod_security() -> Manifest:
    """The pod-level security of every pod that runs the worker image (workers, prefetch)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": WORKER_UID,
        "runAsGroup": WORKER_UID,
        "fsGroup": WORKER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def worker_placement(spec: EmbeddingServiceSpec, *, affinity: bool = True) -> Manifest:
    """Where the spec puts pods of the worker image: only the fields it sets."""
    placement = {
        "nodeSelector": dict(spec.node_selector),
        "tolerations": list(spec.tolerations),
        "affinity": spec.affinity if affinity else None,
        "priorityClassName": spec.priority_class_name,
    }
    return {key: value for key, value in placement.items() if value}


def build_deployment(
    service: EmbeddingService, *, worker_image: str, replicas: int | None = None
) -> Manifest:
    """The worker Deployment, running spec.image or else `worker_image` (the operator's
    setting). `replicas` is left out unless given: the autoscaler (or `spec.replicas` when
    autoscaling is off) owns that field, not the template apply."""
    spec, name = service.spec, service.name
    volumes, mounts = _volumes(spec)
    container: Manifest = {
        "name": "worker",
        "image": spec.image or worker_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["embedfleet-worker", "serve"],
        "ports": [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        # A prefetched model loads offline from the cache; otherwise workers download it.
        "env": worker_environment(spec) + hub_environment(spec, downloads=not prefetches(spec)),
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
    pod_spec: Manifest = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": spec.engine.drain_timeout_seconds
        + TERMINATION_MARGIN_SECONDS,
        "securityContext": worker_pod_security(),
        **worker_placement(spec),
    }
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(WORKER_PORT),
        "prometheus.io/path": "/metrics",
        **spec.pod_annotations,
    }
    deployment_spec: Manifest = {
        "selector": {"matchLabels": selector_labels(name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "template": {
            "metadata": {
                "labels": {**spec.pod_labels, **common_labels(name)},
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


def build_kubernetes_service(service: EmbeddingService, *, to_activator: bool = False) -> Manifest:
    """The Kubernetes Service in front of the workers (the endpoint clients call). While a
    scale-to-zero fleet has no ready worker it selects the service's activator instead."""
    exposure = service.spec.service
    selector = activator_labels(service.name) if to_activator else selector_labels(service.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service),
        "spec": {
            "type": exposure.type,
            "selector": selector,
            "ports": [
                {"name": "http", "port": exposure.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_pdb(service: EmbeddingService) -> Manifest | None:
    """At most one worker voluntarily evicted at a time; pointless with a single replica."""
    if service.spec.max_replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(service),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(service.name)}},
    }


def endpoint_url(service: EmbeddingService) -> str:
    port = service.spec.service.port
    return f"http://{service.name}.{service.namespace}.svc:{port}/v1"


def replicas_to_set(spec: EmbeddingServiceSpec, current: int | None) -> int | None:
    """The replica count the operator must write now, or None to leave it alone. With
    autoscaling off `spec.replicas` rules; with it on, a new Deployment starts at
    max(minReplicas, 1) and a hand-edited count is clamped into [min, max] (the autoscaler
    moves it within that range)."""
    auto = spec.autoscaling
    if not auto.enabled:
        wanted = spec.replicas_when_fixed
        return wanted if current != wanted else None
    low, high = auto.min_replicas, auto.max_replicas
    if current is None:
        return max(low, 1) if high >= 1 else low
    clamped = min(max(current, low), high)
    return clamped if clamped != current else None


def scales_to_zero(spec: EmbeddingServiceSpec) -> bool:
    """A fleet that may go to zero workers gets an activator to wake it (activator.py)."""
    return spec.autoscaling.enabled and spec.autoscaling.min_replicas == 0


def activator_labels(name: str) -> dict[str, str]:
    return {ACTIVATOR_LABEL: name}


def workers_service_name(name: str) -> str:
    return f"{name}-workers"


def activator_name(name: str) -> str:
    return f"{name}-activator"


def build_workers_service(service: EmbeddingService) -> Manifest:
    """The workers' own Service (always selecting them), where the activator forwards."""
    port = service.spec.service.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**_metadata(service), "name": workers_service_name(service.name)},
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(service.name),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_activator_account(service: EmbeddingService) -> Manifest:
    """The activator's own identity: a ServiceAccount bound to no Role (the operator polls the
    activator; it never calls the API), with no token mounted into its pods."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {**_metadata(service), "name": activator_name(service.name)},
        "automountServiceAccountToken": False,
    }


def build_activator(
    service: EmbeddingService, *, image: str, workers_address: str, replicas: int = 1
) -> Manifest:
    """The activator's Deployment: one small CPU pod running as its own ServiceAccount
    (build_activator_account) with no Kubernetes API access (no token mounted). Its pods carry
    the activator label, never the workers' selector."""
    spec, name = service.spec, service.name
    container: Manifest = {
        "name": "activator",
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["embedfleet-operator", "activate"],
        "ports": [{"name": "http", "containerPort": ACTIVATOR_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "EMBEDFLEET_ACTIVATOR_WORKERS", "value": workers_address},
            # Held requests wait at most the service's startup budget (then 503, Retry-After).
            {
                "name": "EMBEDFLEET_ACTIVATOR_HOLD_SECONDS",
                "value": str(spec.startup_timeout_seconds),
            },
            {"name": "EMBEDFLEET_ACTIVATOR_PORT", "value": str(ACTIVATOR_PORT)},
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 10},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_labels = {
        "app.kubernetes.io/name": "embedfleet-activator",
        "app.kubernetes.io/instance": name,
        **MANAGED_BY_LABELS,
        **activator_labels(name),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**_metadata(service), "name": activator_name(name)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": activator_labels(name)},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(spec.pod_annotations)},
                "spec": {
                    "containers": [container],
                    "serviceAccountName": activator_name(name),
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": ACTIVATOR_UID,
                        "runAsGroup": ACTIVATOR_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                },
            },
        },
    }
