"""Pure: how a pod reaches the model hub (the endpoint, a gated model's token) and whether it
must not (a prefetched model loads offline). The token is only ever a secretKeyRef here: no
manifest, log line or status the operator writes holds its value."""

from __future__ import annotations

from typing import Any

from embedfleet_operator.spec import EmbeddingServiceSpec

Manifest = dict[str, Any]


def is_local_path(model: str) -> bool:
    """A folder in the image, not a hub id (the worker's own test, model/files.py)."""
    return model.startswith(("/", ".", "~"))


def prefetches(spec: EmbeddingServiceSpec) -> bool:
    """Whether the model is fetched once by a Job into the shared cache (the CRD refuses
    prefetch without a PVC or with a local path; a body that skipped admission is held to
    the same rule here, and its workers download as without prefetch)."""
    model = spec.model
    return model.prefetch and model.cache.pvc is not None and not is_local_path(model.name)


def token_variable(spec: EmbeddingServiceSpec) -> Manifest | None:
    """HF_TOKEN from the spec's Secret, by reference (the kubelet reads it, not we)."""
    ref = spec.model.hub_token_secret
    if ref is None:
        return None
    return {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
    }


def hub_environment(spec: EmbeddingServiceSpec, *, downloads: bool) -> list[Manifest]:
    """The hub's variables for a pod: one that `downloads` (the prefetch Job, or workers
    without prefetch) gets the endpoint and the token; a worker of a prefetched model gets
    neither and loads from the cache offline (no token in its pod at all)."""
    if not downloads:
        return [
            {"name": "EMBEDFLEET_OFFLINE", "value": "true"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
        ]
    variables: list[Manifest] = []
    if spec.model.hub_endpoint is not None:
        variables.append({"name": "HF_ENDPOINT", "value": spec.model.hub_endpoint})
    token = token_variable(spec)
    if token is not None:
        variables.append(token)
    return variables
