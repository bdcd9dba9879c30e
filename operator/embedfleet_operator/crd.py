"""The EmbeddingService CRD: the one schema definition. `deploy/crd/` holds the YAML that
`python -m embedfleet_operator.crd` writes from it; a test keeps the two equal."""

from __future__ import annotations

import sys
from typing import Any

import yaml

from embedfleet_operator.crd_model import model_schema, prefetch_status
from embedfleet_operator.schema_types import (
    FREEFORM,
    KEY_MAP,
    LABEL_MAP,
    OBJECT_NAME,
    QUANTITY,
    Schema,
    integer,
    number,
    obj,
    string,
    toleration,
)
from embedfleet_operator.spec import (
    OMITTED_AUTOSCALING,
    ApiKeySecretRef,
    AutoscalingSpec,
    EmbeddingServiceSpec,
    EngineSpec,
    ExposureSpec,
    ResourcesSpec,
    default_of,
    to_json,
)

GROUP = "embedfleet.dev"
VERSION = "v1alpha1"
KIND = "EmbeddingService"
PLURAL = "embeddingservices"
SINGULAR = "embeddingservice"
SHORT_NAMES = ["embsvc"]
CRD_NAME = f"{PLURAL}.{GROUP}"


def _engine() -> Schema:
    return obj(
        {
            "maxBatchTokens": integer(
                256,
                1 << 20,
                default=default_of(EngineSpec, "maxBatchTokens"),
                description="Token budget of one forward batch. On a GPU each worker runs one "
                "batch of this size before it turns Ready, so a budget the GPU cannot hold "
                "fails at start-up, not under load.",
            ),
            "maxBatchSize": integer(
                1,
                4096,
                default=default_of(EngineSpec, "maxBatchSize"),
                description="Inputs per batch at most.",
            ),
            "maxInputTokens": integer(
                2, 131072, description="Longest input; unset: the model's context length."
            ),
            "maxQueueTokens": integer(
                1024,
                default=default_of(EngineSpec, "maxQueueTokens"),
                description="Admission queue bound; beyond it: 429.",
            ),
            "maxInputsPerRequest": integer(
                1, 100000, default=default_of(EngineSpec, "maxInputsPerRequest")
            ),
            "defaultInstruction": string(
                description="Task text for `input_type: query` requests that bring none."
            ),
            "drainTimeoutSeconds": integer(
                1,
                3600,
                default=default_of(EngineSpec, "drainTimeoutSeconds"),
                description="On SIGTERM, how long in-flight work may finish.",
            ),
            "maxConnectionAgeSeconds": number(
                0,
                3600,
                default=default_of(EngineSpec, "maxConnectionAgeSeconds"),
                description="A worker closes a client connection between requests once it is "
                "this old, divided by the client connections the worker holds (jittered), so "
                "keep-alive clients spread over new replicas. 0: no age bound.",
            ),
            "maxConnectionRequests": integer(
                0,
                1_000_000,
                default=default_of(EngineSpec, "maxConnectionRequests"),
                description="...or once it has carried this many requests (jittered; in "
                "proportion more past 8 client connections on the worker). 0: no request bound.",
            ),
        },
        default={},
    )


def _omitted_autoscaling() -> str:
    auto = OMITTED_AUTOSCALING
    return (
        f"Omitted: {auto.min_replicas}-{auto.max_replicas} replicas on "
        f"{auto.target_gpu_utilization_percent}% GPU utilisation, idle "
        f"{auto.idle_timeout_seconds} s, window {auto.scale_down_stabilization_seconds} s."
    )


def _autoscaling() -> Schema:
    return obj(
        {
            "enabled": {
                "type": "boolean",
                "default": default_of(AutoscalingSpec, "enabled"),
                "description": "Off: spec.replicas decides.",
            },
            "minReplicas": integer(0, 1000, default=default_of(AutoscalingSpec, "minReplicas")),
            "maxReplicas": integer(1, 1000, default=default_of(AutoscalingSpec, "maxReplicas")),
            # No field default: the object's default carries it, so an explicit autoscaling
            # block must name its targets (the CEL rule below).
            "targetGPUUtilizationPercent": integer(
                1, 100, description="Per replica: the busier of NVML utilisation and engine busy."
            ),
            "targetTokensPerSecondPerReplica": integer(
                1, description="Embedded tokens/s per replica."
            ),
            "targetRequestsPerSecondPerReplica": integer(1, description="Requests/s per replica."),
            "idleTimeoutSeconds": integer(
                0,
                86400,
                default=default_of(AutoscalingSpec, "idleTimeoutSeconds"),
                description="With minReplicas 0: no traffic this long, and at least the "
                "stabilisation window and a worker's measured start, scales to zero. Above zero "
                "an idle fleet comes down through the stabilisation window.",
            ),
            "scaleDownStabilizationSeconds": integer(
                0,
                86400,
                default=default_of(AutoscalingSpec, "scaleDownStabilizationSeconds"),
                description="Scale down to the highest recommendation of this window.",
            ),
        },
        default=to_json(OMITTED_AUTOSCALING),
        description=_omitted_autoscaling(),
        rules=[
            {
                "rule": "self.minReplicas <= self.maxReplicas",
                "message": "minReplicas must not exceed maxReplicas",
            },
            {
                "rule": "!self.enabled || has(self.targetGPUUtilizationPercent) || "
                "has(self.targetTokensPerSecondPerReplica) || "
                "has(self.targetRequestsPerSecondPerReplica)",
                "message": "at least one autoscaling target is required",
            },
        ],
    )


def spec_schema() -> Schema:
    return obj(
        {
            "model": model_schema(),
            "image": string(
                minLength=1,
                description="The worker image; default: the operator's (the chart's "
                "<registry>/worker:<version>).",
            ),
            "imagePullPolicy": string(
                enum=["Always", "IfNotPresent", "Never"],
                default=default_of(EmbeddingServiceSpec, "imagePullPolicy"),
            ),
            "replicas": integer(0, 1000, description="Replica count when autoscaling is off."),
            "resources": obj(
                {
                    "gpus": integer(
                        0,
                        16,
                        default=default_of(ResourcesSpec, "gpus"),
                        description="nvidia.com/gpu per worker; 0: CPU.",
                    ),
                    "memory": {**QUANTITY, "default": default_of(ResourcesSpec, "memory")},
                    "cpu": {**QUANTITY, "default": default_of(ResourcesSpec, "cpu")},
                },
                default={},
            ),
            "engine": _engine(),
            "autoscaling": _autoscaling(),
            "startupTimeoutSeconds": integer(
                30,
                7200,
                default=default_of(EmbeddingServiceSpec, "startupTimeoutSeconds"),
                description="Budget for downloading and loading the model.",
            ),
            "nodeSelector": {**LABEL_MAP, "description": "Label values: up to 63 characters."},
            "tolerations": {"type": "array", "items": toleration()},
            "affinity": FREEFORM,
            "priorityClassName": OBJECT_NAME,
            "podLabels": {
                **LABEL_MAP,
                "description": "Added to the worker pods; values: up to 63 characters.",
            },
            "podAnnotations": {**KEY_MAP, "description": "Added to the worker pods."},
            "service": obj(
                {
                    "type": string(
                        enum=["ClusterIP", "NodePort", "LoadBalancer"],
                        default=default_of(ExposureSpec, "type"),
                    ),
                    "port": integer(1, 65535, default=default_of(ExposureSpec, "port")),
                },
                default={},
            ),
            "apiKeySecretRef": obj(
                {
                    "name": OBJECT_NAME,
                    "key": string(
                        minLength=1,
                        maxLength=253,
                        pattern="^[-._a-zA-Z0-9]+$",
                        default=default_of(ApiKeySecretRef, "key"),
                    ),
                },
                required=["name"],
                description="Secret holding the bearer key clients must send.",
            ),
        },
        required=["model"],
    )


def _condition() -> Schema:
    return obj(
        {
            "type": string(),
            "status": string(enum=["True", "False", "Unknown"]),
            "reason": string(),
            "message": string(),
            "lastTransitionTime": string(format="date-time"),
            "observedGeneration": integer(),
        },
        required=["type", "status"],
    )


def status_schema() -> Schema:
    number = {"type": "number"}
    return obj(
        {
            "observedGeneration": integer(),
            "conditions": {
                "type": "array",
                "items": _condition(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "replicas": integer(),
            "readyReplicas": integer(),
            "desiredReplicas": integer(),
            "selector": string(),
            "endpoint": string(),
            "modelFingerprint": string(),
            "lastScaleTime": string(format="date-time"),
            "lastScaleReason": string(),
            "lastScaleMessage": string(),
            "workerStartSeconds": {
                **number,
                "description": "A worker's measured start, creation to Ready (the median of "
                "the last 5 pods'), which the autoscaler's decisions use.",
            },
            "metrics": obj(
                {
                    # max(GPU, engine busy): what the utilisation target is compared with
                    "utilizationPercent": number,
                    "gpuUtilizationPercent": number,
                    "engineUtilizationPercent": number,
                    "requestsPerSecond": number,
                    "tokensPerSecond": number,
                    "queueTokens": number,
                    "reportingWorkers": integer(),
                    "unmeasuredWorkers": integer(),
                    "task": string(
                        description="What the reporting workers serve: embed or rerank "
                        "(spec.model.task, or what the model folder says)."
                    ),
                },
                description="Fleet load measured at the last autoscaling tick.",
            ),
            "prefetch": prefetch_status(),
        },
        # kopf keeps its own bookkeeping in status when progress storage uses it.
        preserve_unknown=True,
    )


def _columns() -> list[Schema]:
    def column(name: str, type_: str, path: str, **extra: Any) -> Schema:
        return {"name": name, "type": type_, "jsonPath": path, **extra}

    ready = '.status.conditions[?(@.type=="Ready")]'
    return [
        column("Model", "string", ".spec.model.name"),
        column("Ready", "string", ready + ".status"),
        # Why not ready, in one word (ImagePullBackOff, OOMKilled, ModelLoadFailed, ...), and
        # what fails while others serve (Degraded's reason; AsExpected when nothing does).
        column("Reason", "string", ready + ".reason"),
        column("Degraded", "string", '.status.conditions[?(@.type=="Degraded")].reason'),
        column("Replicas", "integer", ".status.replicas"),
        column("Desired", "integer", ".status.desiredReplicas"),
        column("Util%", "number", ".status.metrics.utilizationPercent"),
        column("RPS", "number", ".status.metrics.requestsPerSecond"),
        column("Tokens/s", "number", ".status.metrics.tokensPerSecond", priority=1),
        column("Last-Scale", "string", ".status.lastScaleReason", priority=1),
        column("Prefetch", "string", ".status.prefetch.phase", priority=1),
        column("Age", "date", ".metadata.creationTimestamp"),
    ]


def crd_manifest() -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["embedfleet"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": obj(
                            {"spec": spec_schema(), "status": status_schema()},
                            required=["spec"],
                            description="A fleet of embedding workers behind one endpoint.",
                        )
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": _columns(),
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `python -m embedfleet_operator.crd` from crd.py: do not edit.\n"
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
