"""The EmbeddingService CRD: the one schema definition. `deploy/crd/` holds the YAML that
`python -m embedfleet_operator.crd` writes from it; a test keeps the two equal."""

from __future__ import annotations

import sys
from typing import Any

import yaml

GROUP = "embedfleet.dev"
VERSION = "v1alpha1"
KIND = "EmbeddingService"
PLURAL = "embeddingservices"
SINGULAR = "embeddingservice"
SHORT_NAMES = ["embsvc"]
CRD_NAME = f"{PLURAL}.{GROUP}"

Schema = dict[str, Any]


def _int(minimum: int | None = None, maximum: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "integer", **extra}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _number(minimum: float, maximum: float, **extra: Any) -> Schema:
    return {"type": "number", "minimum": minimum, "maximum": maximum, **extra}


def _str(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def _obj(
    properties: Schema,
    *,
    required: list[str] | None = None,
    rules: list[dict[str, str]] | None = None,
    preserve_unknown: bool = False,
    **extra: Any,
) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    if rules:
        schema["x-kubernetes-validations"] = rules
    if preserve_unknown:
        schema["x-kubernetes-preserve-unknown-fields"] = True
    return schema


# A Kubernetes quantity (32Gi, 500m, 1e3; an integer too), not negative: refused at admission
# with the field's name, where a value like "lots" used to pass the schema and fail every apply
# of the Deployment with an HTTP 500. The pattern is apimachinery's, as kubebuilder emits it.
_QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": _QUANTITY_PATTERN,  # strings only
    "x-kubernetes-validations": [
        {"rule": "type(self) != int || self >= 0", "message": "must not be negative"}
    ],
}
_FREEFORM = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# Label and annotation keys and label values in the apimachinery formats, so a map the pods
# would be refused for is refused here, with a message, and not by the Deployment's apply.
_LABEL_NAME = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_PREFIX = "[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_KEYS_RULE = {
    "rule": f"self.all(k, size(k) <= 317 && k.matches('^({_DNS_PREFIX}/)?{_LABEL_NAME}$'))",
    "message": "keys must be an optional DNS prefix and '/', then 1-63 letters, digits, '-', "
    "'_' or '.' that start and end with a letter or digit",
}
# An object name (PVC, Secret, PriorityClass): a DNS subdomain, as the apiserver checks it.
_OBJECT_NAME = {
    "type": "string", "minLength": 1, "maxLength": 253,
    "pattern": f"^{_DNS_PREFIX}$",
}  # fmt: skip
_KEY_MAP = {**_STRING_MAP, "maxProperties": 64, "x-kubernetes-validations": [_KEYS_RULE]}
_LABEL_MAP = {
    **_KEY_MAP,
    "additionalProperties": {
        "type": "string", "maxLength": 63, "pattern": f"^({_LABEL_NAME})?$",
    },
}  # fmt: skip


def _model() -> Schema:
    return _obj(
        {
            "name": _str(minLength=1, description="Local path in the image or hub id."),
            "revision": _str(description="Hub revision to pin: branch, tag or commit."),
            "dtype": _str(enum=["auto", "bfloat16", "float16", "float32"], default="auto"),
            "cache": _obj(
                {
                    "pvc": {**_OBJECT_NAME, "description": "Existing PVC holding the hub cache."},
                    "emptyDirSizeLimit": {**_QUANTITY, "default": "50Gi"},
                },
                description="Where model files are cached (mounted at /models).",
                rules=[
                    {
                        "rule": "!(has(self.pvc) && has(self.emptyDirSizeLimit))",
                        "message": "set either pvc or emptyDirSizeLimit, not both",
                    }
                ],
            ),
        },
        required=["name"],
    )


def _engine() -> Schema:
    return _obj(
        {
            "maxBatchTokens": _int(
                256,
                1 << 20,
                default=16384,
                description="Token budget of one forward batch. On a GPU each worker runs one "
                "batch of this size before it turns Ready, so a budget the GPU cannot hold "
                "fails at start-up, not under load.",
            ),
            "maxBatchSize": _int(1, 4096, default=256, description="Inputs per batch at most."),
            "maxInputTokens": _int(
                2, 131072, description="Longest input; unset: the model's context length."
            ),
            "maxQueueTokens": _int(
                1024, default=1 << 20, description="Admission queue bound; beyond it: 429."
            ),
            "maxInputsPerRequest": _int(1, 100000, default=2048),
            "defaultInstruction": _str(
                description="Task text for `input_type: query` requests that bring none."
            ),
            "drainTimeoutSeconds": _int(
                1, 3600, default=30, description="On SIGTERM, how long in-flight work may finish."
            ),
            "maxConnectionAgeSeconds": _number(
                0,
                3600,
                default=5,
                description="A worker closes a client connection between requests once it is "
                "this old, divided by the client connections the worker holds (jittered), so "
                "keep-alive clients spread over new replicas. 0: no age bound.",
            ),
            "maxConnectionRequests": _int(
                0,
                1_000_000,
                default=4,
                description="...or once it has carried this many requests (jittered; in "
                "proportion more past 8 client connections on the worker). 0: no request bound.",
            ),
        },
        default={},
    )


AUTOSCALING_DEFAULTS: Schema = {
    "enabled": True,
    "minReplicas": 1,
    "maxReplicas": 4,
    "targetGPUUtilizationPercent": 65,
    "idleTimeoutSeconds": 120,
    "scaleDownStabilizationSeconds": 300,
}


def _autoscaling() -> Schema:
    return _obj(
        {
            "enabled": {
                "type": "boolean",
                "default": True,
                "description": "Off: spec.replicas decides.",
            },
            "minReplicas": _int(0, 1000, default=1),
            "maxReplicas": _int(1, 1000, default=4),
            # No field default: the object's default carries it, so an explicit autoscaling
            # block must name its targets (the CEL rule below).
            "targetGPUUtilizationPercent": _int(
                1, 100, description="Per replica: the busier of NVML utilisation and engine busy."
            ),
            "targetTokensPerSecondPerReplica": _int(
                1, description="Embedded tokens/s per replica."
            ),
            "targetRequestsPerSecondPerReplica": _int(1, description="Requests/s per replica."),
            "idleTimeoutSeconds": _int(
                0,
                86400,
                default=120,
                description="With minReplicas 0: no traffic this long, and at least the "
                "stabilisation window, scales to zero. Above zero an idle fleet comes down "
                "through the stabilisation window.",
            ),
            "scaleDownStabilizationSeconds": _int(
                0,
                86400,
                default=300,
                description="Scale down to the highest recommendation of this window.",
            ),
        },
        default=AUTOSCALING_DEFAULTS,
        description="Omitted: 1-4 replicas on 65% GPU utilisation, idle 120 s, window 300 s.",
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


def _toleration() -> Schema:
    """core/v1 Toleration, checked here so a typo is refused on the EmbeddingService."""
    return _obj(
        {
            "key": _str(maxLength=317, pattern=f"^(({_DNS_PREFIX}/)?{_LABEL_NAME})?$"),
            "operator": _str(enum=["Exists", "Equal"]),
            "value": _str(),
            "effect": _str(enum=["", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
            "tolerationSeconds": {"type": "integer", "format": "int64"},
        },
        rules=[
            {
                "rule": "!has(self.operator) || self.operator != 'Exists' || "
                "!has(self.value) || self.value == ''",
                "message": "a toleration with operator Exists takes no value",
            },
            {
                "rule": "(has(self.key) && self.key != '') || "
                "(has(self.operator) && self.operator == 'Exists')",
                "message": "a toleration without a key needs operator Exists",
            },
            {
                "rule": "!has(self.tolerationSeconds) || (has(self.effect) && "
                "self.effect == 'NoExecute')",
                "message": "tolerationSeconds needs effect NoExecute",
            },
        ],
    )


def spec_schema() -> Schema:
    return _obj(
        {
            "model": _model(),
            "image": _str(
                minLength=1,
                description="The worker image; default: the operator's (the chart's "
                "<registry>/worker:<version>).",
            ),
            "imagePullPolicy": _str(
                enum=["Always", "IfNotPresent", "Never"], default="IfNotPresent"
            ),
            "replicas": _int(0, 1000, description="Replica count when autoscaling is off."),
            "resources": _obj(
                {
                    "gpus": _int(
                        0, 16, default=1, description="nvidia.com/gpu per worker; 0: CPU."
                    ),
                    "memory": {**_QUANTITY, "default": "32Gi"},
                    "cpu": {**_QUANTITY, "default": "4"},
                },
                default={},
            ),
            "engine": _engine(),
            "autoscaling": _autoscaling(),
            "startupTimeoutSeconds": _int(
                30, 7200, default=1800, description="Budget for downloading and loading the model."
            ),
            "nodeSelector": {**_LABEL_MAP, "description": "Label values: up to 63 characters."},
            "tolerations": {"type": "array", "items": _toleration()},
            "affinity": _FREEFORM,
            "priorityClassName": _OBJECT_NAME,
            "podLabels": {
                **_LABEL_MAP,
                "description": "Added to the worker pods; values: up to 63 characters.",
            },
            "podAnnotations": {**_KEY_MAP, "description": "Added to the worker pods."},
            "service": _obj(
                {
                    "type": _str(
                        enum=["ClusterIP", "NodePort", "LoadBalancer"], default="ClusterIP"
                    ),
                    "port": _int(1, 65535, default=8000),
                },
                default={},
            ),
            "apiKeySecretRef": _obj(
                {
                    "name": _OBJECT_NAME,
                    "key": _str(
                        minLength=1, maxLength=253, pattern="^[-._a-zA-Z0-9]+$", default="api-key"
                    ),
                },
                required=["name"],
                description="Secret holding the bearer key clients must send.",
            ),
        },
        required=["model"],
    )


def _condition() -> Schema:
    return _obj(
        {
            "type": _str(),
            "status": _str(enum=["True", "False", "Unknown"]),
            "reason": _str(),
            "message": _str(),
            "lastTransitionTime": _str(format="date-time"),
            "observedGeneration": _int(),
        },
        required=["type", "status"],
    )


def status_schema() -> Schema:
    number = {"type": "number"}
    return _obj(
        {
            "observedGeneration": _int(),
            "conditions": {
                "type": "array",
                "items": _condition(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "replicas": _int(),
            "readyReplicas": _int(),
            "desiredReplicas": _int(),
            "selector": _str(),
            "endpoint": _str(),
            "modelFingerprint": _str(),
            "lastScaleTime": _str(format="date-time"),
            "lastScaleReason": _str(),
            "lastScaleMessage": _str(),
            "metrics": _obj(
                {
                    # max(GPU, engine busy): what the utilisation target is compared with
                    "utilizationPercent": number,
                    "gpuUtilizationPercent": number,
                    "engineUtilizationPercent": number,
                    "requestsPerSecond": number,
                    "tokensPerSecond": number,
                    "queueTokens": number,
                    "reportingWorkers": _int(),
                    "unmeasuredWorkers": _int(),
                },
                description="Fleet load measured at the last autoscaling tick.",
            ),
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
                        "openAPIV3Schema": _obj(
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


def _type_of(schema: Schema) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "quantity"
    if "additionalProperties" in schema:
        return "map[string]string"
    if schema.get("type") == "array":
        return "list"
    return str(schema.get("type", "object"))


def _constraints(schema: Schema) -> str:
    parts = []
    if "enum" in schema:
        parts.append(" \\| ".join(f"`{v}`" for v in schema["enum"]))
    if "minimum" in schema or "maximum" in schema:
        parts.append(f"{schema.get('minimum', '')}..{schema.get('maximum', '')}")
    if "minLength" in schema:
        parts.append("non-empty")
    for rule in schema.get("x-kubernetes-validations", []):
        parts.append(rule["message"])
    return "; ".join(parts)


def _yaml(value: Any) -> str:
    return str(yaml.safe_dump(value, default_flow_style=True)).strip().removesuffix("...").strip()


def reference_markdown() -> str:
    """The spec's fields as a Markdown table, for the README (a test keeps it current)."""
    rows = ["| field | type | default | allowed | notes |", "|---|---|---|---|---|"]

    def walk(schema: Schema, path: str, required: list[str]) -> None:
        for name, child in schema.get("properties", {}).items():
            field = f"{path}.{name}" if path else name
            default = child.get("default")
            shown = "" if default is None or isinstance(default, dict) else f"`{_yaml(default)}`"
            notes = child.get("description", "")
            if name in required:
                notes = ("required. " + notes).strip()
            rows.append(
                f"| `{field}` | {_type_of(child)} | {shown} | {_constraints(child)} | {notes} |"
            )
            if child.get("type") == "object" and "properties" in child:
                walk(child, field, child.get("required", []))

    spec = spec_schema()
    walk(spec, "spec", spec.get("required", []))
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown() if sys.argv[1:] == ["--markdown"] else render())
