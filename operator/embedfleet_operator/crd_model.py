"""The CRD's schema of spec.model (name, revision, dtype, its cache, and fetching it from a hub:
prefetch, hubTokenSecret, hubEndpoint) and of status.prefetch, kept apart from crd.py, which
takes them from here. Defaults come from spec.py, as everywhere in the CRD."""

from __future__ import annotations

from embedfleet_operator.schema_types import OBJECT_NAME, QUANTITY, Schema, obj, string
from embedfleet_operator.spec import HubTokenSecretRef, ModelCacheSpec, ModelSpec, default_of

# A local folder (an absolute, relative or home path) is on disk already: nothing to fetch.
_LOCAL_PATH = "self.name.startsWith('/') || self.name.startsWith('.') || self.name.startsWith('~')"


def hub_fields() -> Schema:
    """spec.model's properties about the hub."""
    return {
        "prefetch": {
            "type": "boolean",
            "default": default_of(ModelSpec, "prefetch"),
            "description": "Fetch the model into the cache PVC once per model and revision "
            "(a Job the operator owns) before workers start; they then load it offline. "
            "Needs cache.pvc and a hub id.",
        },
        "hubTokenSecret": obj(
            {
                "name": OBJECT_NAME,
                "key": string(
                    minLength=1,
                    maxLength=253,
                    pattern="^[-._a-zA-Z0-9]+$",
                    default=default_of(HubTokenSecretRef, "key"),
                ),
            },
            required=["name"],
            description="Secret (this namespace) holding a gated model's hub token; pods get "
            "it as HF_TOKEN through a secretKeyRef, never inline.",
        ),
        "hubEndpoint": string(
            maxLength=2048,
            pattern="^https?://[^\\s]+$",
            description="A Hugging Face hub mirror (HF_ENDPOINT); unset: huggingface.co.",
        ),
    }


def model_rules() -> list[dict[str, str]]:
    """spec.model's CEL rules: prefetch writes to a volume every worker mounts, and only a
    hub id is fetched."""
    return [
        {
            "rule": "!(has(self.prefetch) && self.prefetch) || "
            "(has(self.cache) && has(self.cache.pvc))",
            "message": "prefetch needs cache.pvc: a volume the prefetch Job and every worker "
            "share (an emptyDir is per pod)",
        },
        {
            "rule": f"!(has(self.prefetch) && self.prefetch) || !({_LOCAL_PATH})",
            "message": "prefetch needs a hub id: a local model folder is on disk already",
        },
    ]


def prefetch_status() -> Schema:
    return obj(
        {
            "job": string(),
            "model": string(),
            "revision": string(),
            "phase": string(enum=["Pending", "Running", "Succeeded", "Failed"]),
            "message": string(),
            "startTime": string(format="date-time"),
            "completionTime": string(format="date-time"),
        },
        description="The prefetch Job of the current model and revision (spec.model.prefetch).",
    )


def model_schema() -> Schema:
    return obj(
        {
            "name": string(minLength=1, description="Local path in the image or hub id."),
            "revision": string(description="Hub revision to pin: branch, tag or commit."),
            "dtype": string(
                enum=["auto", "bfloat16", "float16", "float32"],
                default=default_of(ModelSpec, "dtype"),
            ),
            "task": string(
                enum=["auto", "embed", "rerank"],
                default=default_of(ModelSpec, "task"),
                description="embed serves /v1/embeddings, rerank /v1/rerank (a Qwen3 reranker "
                "such as Qwen/Qwen3-Reranker-4B); auto: a Qwen3 causal LM without "
                "sentence-transformers files reranks, anything else embeds.",
            ),
            "cache": obj(
                {
                    "pvc": {**OBJECT_NAME, "description": "Existing PVC holding the hub cache."},
                    # No `default:` here: one would be applied beside a pvc too, and the rule
                    # below refuse every PVC. The typed spec supplies it when no pvc is set.
                    "emptyDirSizeLimit": {
                        **QUANTITY,
                        "description": "Without a pvc, the emptyDir's size limit (default "
                        f"{ModelCacheSpec.empty_dir_size_limit}).",
                    },
                },
                description="Where model files are cached (mounted at /models).",
                rules=[
                    {
                        "rule": "!(has(self.pvc) && has(self.emptyDirSizeLimit))",
                        "message": "set either pvc or emptyDirSizeLimit, not both",
                    }
                ],
            ),
            **hub_fields(),
        },
        required=["name"],
        rules=model_rules(),
    )
