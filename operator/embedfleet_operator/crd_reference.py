"""The spec's fields as a Markdown table, for the README (tests/unit/test_readme.py keeps the
README's copy current: `python -m embedfleet_operator.crd_reference`)."""

from __future__ import annotations

import sys
from typing import Any

import yaml

from embedfleet_operator.crd import spec_schema
from embedfleet_operator.schema_types import Schema


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
    sys.stdout.write(reference_markdown())
