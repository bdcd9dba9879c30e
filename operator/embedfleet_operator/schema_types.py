"""OpenAPI building blocks for the CRD's schema (crd.py): typed scalars, objects with CEL rules,
and Kubernetes' own formats (quantities, label maps, object names, tolerations), each checked
at admission so a bad value is refused on the EmbeddingService with its field's name rather than
by the apply of the Deployment it would become."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def integer(minimum: int | None = None, maximum: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "integer", **extra}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def number(minimum: float, maximum: float, **extra: Any) -> Schema:
    return {"type": "number", "minimum": minimum, "maximum": maximum, **extra}


def string(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def obj(
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
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
QUANTITY = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": QUANTITY_PATTERN,  # strings only
    "x-kubernetes-validations": [
        {"rule": "type(self) != int || self >= 0", "message": "must not be negative"}
    ],
}
FREEFORM = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# Label and annotation keys and label values in the apimachinery formats, so a map the pods
# would be refused for is refused here, with a message, and not by the Deployment's apply.
LABEL_NAME = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
DNS_PREFIX = "[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
KEYS_RULE = {
    "rule": f"self.all(k, size(k) <= 317 && k.matches('^({DNS_PREFIX}/)?{LABEL_NAME}$'))",
    "message": "keys must be an optional DNS prefix and '/', then 1-63 letters, digits, '-', "
    "'_' or '.' that start and end with a letter or digit",
}
# An object name (PVC, Secret, PriorityClass): a DNS subdomain, as the apiserver checks it.
OBJECT_NAME = {
    "type": "string", "minLength": 1, "maxLength": 253,
    "pattern": f"^{DNS_PREFIX}$",
}  # fmt: skip
KEY_MAP = {**STRING_MAP, "maxProperties": 64, "x-kubernetes-validations": [KEYS_RULE]}
LABEL_MAP = {
    **KEY_MAP,
    "additionalProperties": {
        "type": "string", "maxLength": 63, "pattern": f"^({LABEL_NAME})?$",
    },
}  # fmt: skip


def toleration() -> Schema:
    """core/v1 Toleration, checked here so a typo is refused on the EmbeddingService."""
    return obj(
        {
            "key": string(maxLength=317, pattern=f"^(({DNS_PREFIX}/)?{LABEL_NAME})?$"),
            "operator": string(enum=["Exists", "Equal"]),
            "value": string(),
            "effect": string(enum=["", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
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
