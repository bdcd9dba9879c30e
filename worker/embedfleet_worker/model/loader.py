"""Loads a model folder or hub id into a runner plus the matching input encoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from embedfleet_worker.engine.tokenization import InputEncoder, probe_template
from embedfleet_worker.model.files import (
    ModelDescription,
    describe_model,
    fingerprint,
    resolve_model_dir,
)
from embedfleet_worker.model.runners.base import EmbeddingRunner

DTypeName = Literal["auto", "bfloat16", "float16", "float32"]
DeviceName = Literal["auto", "cuda", "cpu"]
RunnerName = Literal["auto", "qwen3", "transformers"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class ModelSpec:
    model: str
    revision: str | None = None
    dtype: DTypeName = "auto"
    device: DeviceName = "auto"
    runner: RunnerName = "auto"
    max_input_tokens: int | None = None  # None: the model's context
    default_instruction: str | None = None
    cache_dir: Path | None = None  # hub cache (the model cache volume in a pod)
    offline: bool = False  # only the cache, never the network
    fused_norms: bool = False  # Qwen3 on CUDA: faster, see runners/qwen3_ops.LayerOps


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    description: ModelDescription
    runner: EmbeddingRunner
    encoder: InputEncoder
    fingerprint: str

    @property
    def dtype_name(self) -> str:
        return str(self.runner.dtype).removeprefix("torch.")


def resolve_device(name: DeviceName) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(name)


def resolve_dtype(name: DTypeName, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it (fp16 on older ones), fp32 on CPU."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass(frozen=True)
class LoadedEncoder:
    """The model folder's description and input encoder: all the HTTP process needs."""

    path: Path
    description: ModelDescription
    tokenizer: object
    encoder: InputEncoder


def load_encoder(spec: ModelSpec) -> LoadedEncoder:
    """Resolves the model (downloading a hub id unless offline) and builds its input encoder."""
    from transformers import AutoTokenizer

    path = resolve_model_dir(
        spec.model, spec.revision, cache_dir=spec.cache_dir, offline=spec.offline
    )
    description = describe_model(path)
    tokenizer = AutoTokenizer.from_pretrained(
        str(path), trust_remote_code=False, local_files_only=True
    )
    max_tokens = description.max_input_tokens
    if spec.max_input_tokens is not None:
        if not 1 < spec.max_input_tokens <= max_tokens:
            raise ValueError(f"max_input_tokens must be in 2..{max_tokens} for this model")
        max_tokens = spec.max_input_tokens
    encoder = InputEncoder(
        tokenizer,
        probe_template(tokenizer, description.pooling),
        max_input_tokens=max_tokens,
        vocab_size=description.vocab_size,
        default_instruction=spec.default_instruction,
    )
    return LoadedEncoder(path, description, tokenizer, encoder)


def load_model(spec: ModelSpec) -> LoadedModel:
    front = load_encoder(spec)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    runner = _build_runner(spec, front.description, front.tokenizer, device, dtype)
    return LoadedModel(spec, front.description, runner, front.encoder, fingerprint(front.path))


def _build_runner(
    spec: ModelSpec,
    description: ModelDescription,
    tokenizer: object,
    device: torch.device,
    dtype: torch.dtype,
) -> EmbeddingRunner:
    use_qwen3 = spec.runner == "qwen3" or (
        spec.runner == "auto" and description.model_type == "qwen3"
    )
    if use_qwen3:
        from embedfleet_worker.model.runners.qwen3 import Qwen3Runner

        return Qwen3Runner.from_pretrained(
            description.path, device=device, dtype=dtype, fused_norms=spec.fused_norms
        )
    from embedfleet_worker.model.runners.transformers_runner import TransformersRunner

    pad = getattr(tokenizer, "pad_token_id", None)
    return TransformersRunner.from_pretrained(
        description.path,
        pooling=description.pooling,
        pad_token_id=pad if isinstance(pad, int) else 0,
        device=device,
        dtype=dtype,
    )
