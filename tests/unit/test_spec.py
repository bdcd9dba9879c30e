"""The typed spec (spec.py) is the one home of the CRD's defaults: the CRD's `default:` values
are taken from it, no operator module repeats one, and a body it cannot read says which field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from embedfleet_operator import crd
from embedfleet_operator.spec import (
    OMITTED_AUTOSCALING,
    EmbeddingServiceSpec,
    HubTokenSecretRef,
    ModelSpec,
    SpecError,
    parse_spec,
    to_json,
)

OPERATOR = Path(crd.__file__).parent


def _defaults(schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    found = {}
    for name, child in schema.get("properties", {}).items():
        field = f"{path}.{name}" if path else name
        if "default" in child:
            found[field] = child["default"]
        found.update(_defaults(child, field))
    return found


def _at(document: Any, path: str) -> Any:
    for part in path.split("."):
        document = document[part]
    return document


def test_every_crd_default_is_the_typed_specs() -> None:
    """Parse a spec with nothing but the model, as the operator sees a body: every default the
    apiserver would fill in is the one the typed spec reads."""
    minimal = to_json(parse_spec({"model": {"name": "m", "cache": {},
                                            "hubTokenSecret": {"name": "t"}},
                                  "apiKeySecretRef": {"name": "k"}}))  # fmt: skip
    schema_defaults = _defaults(crd.spec_schema())
    assert len(schema_defaults) >= 20
    for path, default in schema_defaults.items():
        if isinstance(default, dict) and not default:
            continue  # `{}`: an object that exists so its fields get their defaults
        assert _at(minimal, path) == default, path


def test_every_typed_default_is_in_the_crd() -> None:
    """...and the other way round: a default added to the models reaches the CRD."""
    schema_defaults = _defaults(crd.spec_schema())
    minimal = to_json(EmbeddingServiceSpec(model=ModelSpec(name="m")))
    leaves = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, f"{path}.{key}" if path else key)
        else:
            leaves[path] = value

    walk(minimal, "")
    leaves.pop("model.name")
    # A default only without a pvc, which a CRD default cannot say (it would be applied beside
    # a pvc, and the cache's CEL rule refuse it): the field's description gives it.
    assert "50Gi" in crd.spec_schema()["properties"]["model"]["properties"]["cache"][
        "properties"]["emptyDirSizeLimit"]["description"]  # fmt: skip
    leaves.pop("model.cache.emptyDirSizeLimit")
    for path in leaves:
        covered = path in schema_defaults or any(
            path.startswith(f"{p}.") and isinstance(d, dict) and d
            for p, d in schema_defaults.items()
        )
        assert covered, path
    assert schema_defaults["autoscaling"] == to_json(OMITTED_AUTOSCALING)


_DEFAULTED_READ = re.compile(r"""\.get\(\s*["'](\w+)["']\s*,\s*[^)\s]""")


def test_no_operator_module_repeats_a_default() -> None:
    """`spec.get("maxReplicas", 4)` is how defaults used to be repeated in five files."""
    names = set(_defaults(crd.spec_schema()))
    leaf_names = {path.rsplit(".", 1)[-1] for path in names}
    offenders = []
    for module in sorted(OPERATOR.glob("*.py")):
        if module.name in ("spec.py", "crd.py", "crd_reference.py", "schema_types.py"):
            continue  # the spec itself, and modules that read the schema, not a spec
        for number, line in enumerate(module.read_text().splitlines(), 1):
            for match in _DEFAULTED_READ.finditer(line):
                if match.group(1) in leaf_names:
                    offenders.append(f"{module.name}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "spec.model: Required value"),
        ({"model": {"name": "m"}, "engine": {"maxBatchTokens": "many"}},
         "spec.engine.maxBatchTokens: expected an integer, got str 'many'"),
        ({"model": {"name": "m"}, "autoscaling": {"enabled": "yes"}},
         "spec.autoscaling.enabled: expected true or false"),
        ({"model": {"name": "m"}, "tolerations": {"key": "gpu"}},
         "spec.tolerations: expected a list"),
        ({"model": {"name": "m"}, "podLabels": {"team": 3}}, "spec.podLabels.team: expected a"),
        ({"model": "m"}, "spec.model: expected an object"),
        ({"model": {"name": "m", "prefetch": "yes"}}, "spec.model.prefetch: expected true or"),
        ({"model": {"name": "m", "hubTokenSecret": {"key": "t"}}},
         "spec.model.hubTokenSecret.name: Required value"),
    ],
)  # fmt: skip
def test_a_body_it_cannot_read_names_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(spec)


def test_an_omitted_autoscaling_block_targets_gpu_utilisation_an_explicit_one_only_its_own() -> (
    None
):
    assert parse_spec({"model": {"name": "m"}}).autoscaling.target_gpu_utilization_percent == 65
    explicit = parse_spec(
        {"model": {"name": "m"}, "autoscaling": {"targetRequestsPerSecondPerReplica": 20}}
    ).autoscaling
    assert explicit.target_gpu_utilization_percent is None
    assert explicit.target_requests_per_second_per_replica == 20
    assert (explicit.min_replicas, explicit.max_replicas) == (1, 4)


def test_the_hub_fields_are_off_unless_set() -> None:
    plain = parse_spec({"model": {"name": "acme/m"}}).model
    assert (plain.prefetch, plain.hub_token_secret, plain.hub_endpoint) == (False, None, None)
    model = parse_spec({"model": {"name": "acme/m", "prefetch": True, "cache": {"pvc": "models"},
                                  "hubTokenSecret": {"name": "hf"},
                                  "hubEndpoint": "http://127.0.0.1:1"}}).model  # fmt: skip
    assert model.prefetch
    assert model.cache.pvc == "models"
    assert model.hub_token_secret == HubTokenSecretRef(name="hf", key="token")
    assert model.hub_endpoint == "http://127.0.0.1:1"
