"""The EmbeddingService spec as typed, frozen models, read once from the resource's body. Every
default of the CRD lives here and only here: crd.py takes its `default:` values from these
fields (a unit test keeps the two equal), and builders, policy, status and the autoscaler read
attributes instead of `.get(key, default)`.

Each field's JSON name is its camelCase spelling unless its metadata says otherwise. A body the
apiserver let through but these models cannot read (an older CRD, a hand-made object) raises
`SpecError` with the field's path, which status shows as InvalidSpec."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

Manifest = dict[str, Any]
T = TypeVar("T")


class SpecError(ValueError):
    """A body that does not fit the spec: the message names the field, as the apiserver does."""


def _json(name: str) -> dict[str, str]:
    return {"json": name}


@dataclass(frozen=True)
class ModelCacheSpec:
    pvc: str | None = None
    empty_dir_size_limit: str = "50Gi"


@dataclass(frozen=True)
class HubTokenSecretRef:
    """A Secret in the service's namespace holding a gated model's hub token: it reaches pods
    only as a secretKeyRef variable (HF_TOKEN), never in a manifest, a log or status."""

    name: str
    key: str = "token"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    revision: str | None = None
    dtype: str = "auto"
    task: str = "auto"  # embed (/v1/embeddings) or rerank (/v1/rerank); auto: the folder says
    cache: ModelCacheSpec = ModelCacheSpec()
    # Fetch the model into the cache PVC once per model and revision (a Job), before workers
    # start; the workers then load it offline (prefetch.py).
    prefetch: bool = False
    hub_token_secret: HubTokenSecretRef | None = None
    hub_endpoint: str | None = None  # a hub mirror (HF_ENDPOINT); unset: huggingface.co


@dataclass(frozen=True)
class EngineSpec:
    max_batch_tokens: int = 16384
    max_batch_size: int = 256
    max_input_tokens: int | None = None
    max_queue_tokens: int = 1 << 20
    max_inputs_per_request: int = 2048
    default_instruction: str | None = None
    drain_timeout_seconds: int = 30
    max_connection_age_seconds: float = 5
    max_connection_requests: int = 4


@dataclass(frozen=True)
class AutoscalingSpec:
    enabled: bool = True
    min_replicas: int = 1
    max_replicas: int = 4
    # No field default: an explicit autoscaling block names its own targets (a CEL rule);
    # only an omitted block gets the GPU target (OMITTED_AUTOSCALING).
    target_gpu_utilization_percent: int | None = field(
        default=None, metadata=_json("targetGPUUtilizationPercent")
    )
    target_tokens_per_second_per_replica: int | None = None
    target_requests_per_second_per_replica: int | None = None
    idle_timeout_seconds: int = 120
    scale_down_stabilization_seconds: int = 300


# What `autoscaling` is when the spec leaves it out.
OMITTED_AUTOSCALING = AutoscalingSpec(target_gpu_utilization_percent=65)


@dataclass(frozen=True)
class ResourcesSpec:
    gpus: int = 1
    memory: str = "32Gi"
    cpu: str = "4"


@dataclass(frozen=True)
class ExposureSpec:
    """spec.service: how the Kubernetes Service in front of the workers is exposed."""

    type: str = "ClusterIP"
    port: int = 8000


@dataclass(frozen=True)
class ApiKeySecretRef:
    name: str
    key: str = "api-key"


@dataclass(frozen=True)
class EmbeddingServiceSpec:
    model: ModelSpec
    image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    replicas: int | None = None
    resources: ResourcesSpec = ResourcesSpec()
    engine: EngineSpec = EngineSpec()
    autoscaling: AutoscalingSpec = OMITTED_AUTOSCALING
    startup_timeout_seconds: int = 1800
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Manifest, ...] = ()
    affinity: Manifest | None = None
    priority_class_name: str | None = None
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    service: ExposureSpec = ExposureSpec()
    api_key_secret_ref: ApiKeySecretRef | None = None

    @property
    def replicas_when_fixed(self) -> int:
        """The replica count with autoscaling off (spec.replicas, one when unset)."""
        return 1 if self.replicas is None else self.replicas

    @property
    def max_replicas(self) -> int:
        """The most workers this spec can run."""
        if self.autoscaling.enabled:
            return self.autoscaling.max_replicas
        return self.replicas_when_fixed


@dataclass(frozen=True)
class EmbeddingService:
    """The resource as the operator uses it: identity, spec and the status as last written."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: EmbeddingServiceSpec
    status: Manifest = field(default_factory=dict, compare=False)
    deleting: bool = False

    @property
    def key(self) -> str:
        return self.uid or f"{self.namespace}/{self.name}"


def json_name(item: dataclasses.Field[Any]) -> str:
    given = item.metadata.get("json")
    if given:
        return str(given)
    head, *rest = item.name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def _read(kind: Any, value: Any, path: str) -> Any:
    """`value` as the annotated type `kind`, or SpecError naming `path`."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        return _read(options[0], value, path)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise SpecError(f"{path}: expected an object, got {_describe(value)}")
        return _parse(typing.cast(type[Any], kind), value, path)
    if kind is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{path}: expected an integer, got {_describe(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{path}: expected a number, got {_describe(value)}")
        return float(value)
    if kind is str:
        # Quantities may come as integers (memory: 8): the builders write them as strings.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise SpecError(f"{path}: expected a string, got {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise SpecError(f"{path}: expected a list, got {_describe(value)}")
        item_kind = typing.get_args(kind)[0]
        return tuple(_read(item_kind, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is Mapping or kind is Manifest or origin is dict:
        if not isinstance(value, Mapping):
            raise SpecError(f"{path}: expected an object, got {_describe(value)}")
        if typing.get_args(kind) == (str, str):
            bad = [k for k, v in value.items() if not isinstance(v, str)]
            if bad:
                raise SpecError(f"{path}.{bad[0]}: expected a string")
        return dict(value)
    raise TypeError(f"no reader for {kind!r} at {path}")  # a model this module cannot read


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _parse(cls: type[T], body: Mapping[str, Any], path: str) -> T:
    hints, values = _hints(cls), {}
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = json_name(item)
        if name not in body or body[name] is None:
            no_default = item.default is dataclasses.MISSING
            if no_default and item.default_factory is dataclasses.MISSING:
                raise SpecError(f"{path}.{name}: Required value")
            continue
        values[item.name] = _read(hints[item.name], body[name], f"{path}.{name}")
    return cls(**values)


def parse_spec(body: Mapping[str, Any]) -> EmbeddingServiceSpec:
    """The spec of a resource body (spec.* as the apiserver stored it, defaults applied or
    not: the models carry the same defaults)."""
    if not isinstance(body, Mapping):
        raise SpecError(f"spec: expected an object, got {_describe(body)}")
    return _parse(EmbeddingServiceSpec, body, "spec")


def parse_service(body: Mapping[str, Any]) -> EmbeddingService:
    """The resource from its body: metadata, spec (SpecError if unreadable) and status."""
    meta = body.get("metadata") or {}
    return EmbeddingService(
        name=meta["name"],
        namespace=meta.get("namespace") or "default",
        uid=meta.get("uid") or "",
        generation=int(meta.get("generation") or 0),
        spec=parse_spec(body.get("spec") or {}),
        status=dict(body.get("status") or {}),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def to_json(model: Any) -> Any:
    """A model back to its JSON form (camelCase, unset optional fields left out)."""
    if dataclasses.is_dataclass(model) and not isinstance(model, type):
        out = {}
        for item in dataclasses.fields(model):
            value = getattr(model, item.name)
            if value is None or value == () or value == {}:
                continue
            out[json_name(item)] = to_json(value)
        return out
    if isinstance(model, tuple):
        return [to_json(v) for v in model]
    if isinstance(model, Mapping):
        return dict(model)
    return model


def default_of(cls: type[Any], json: str) -> Any:
    """The default of `cls`'s field spelled `json` in the CRD, for crd.py's `default:`."""
    for item in dataclasses.fields(cls):
        if json_name(item) == json:
            if item.default is not dataclasses.MISSING:
                return to_json(item.default)
            break
    raise KeyError(f"{cls.__name__}.{json} has no default")
