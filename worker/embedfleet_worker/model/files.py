"""What a model folder says about itself: where it is (local folder or hub id at a pinned
revision), its sentence-transformers pooling and normalisation, its context length, and a
fingerprint that identifies exactly the files loaded."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from embedfleet_worker.engine.pooling import PoolingMode

# Files that decide the model's behaviour; hashed in full (they are small).
_DESCRIPTOR_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# What a worker reads of a hub repo, and so all that `embedfleet-worker prefetch` fetches.
HUB_PATTERNS = (*_DESCRIPTOR_FILES, "*.safetensors", "*.safetensors.index.json")
_SAMPLE_BYTES = 1 << 20  # per weight file: header + three 1 MiB windows
_SUPPORTED_MODULES = {
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
}
QWEN3_CONTEXT = 32768


class Task(StrEnum):
    EMBED = "embed"  # /v1/embeddings: one vector per input
    RERANK = "rerank"  # /v1/rerank: a relevance score per (query, document) pair


@dataclass(frozen=True)
class ModelDescription:
    path: Path
    model_type: str
    hidden_size: int
    vocab_size: int
    pooling: PoolingMode
    normalize_by_default: bool
    max_input_tokens: int
    task: Task = Task.EMBED
    tied_embeddings: bool = False  # the LM head is the token embedding (rerank scores)


def resolve_model_dir(
    model: str,
    revision: str | None = None,
    *,
    cache_dir: Path | None = None,
    offline: bool = False,
) -> Path:
    """A local folder as is; otherwise a Hugging Face hub id at `revision` (branch, tag or
    commit), downloaded into `cache_dir` (the hub cache by default). `offline` (or
    HF_HUB_OFFLINE=1) serves it from the cache only, e.g. a pre-populated model volume."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local.resolve()
    if model.startswith(("/", "./", "../", "~")):
        # A path, not a hub id: say so, instead of the hub client's "Repo id must be in the
        # form 'repo_name' or 'namespace/repo_name'".
        what = "is not a folder" if local.exists() else "does not exist"
        raise FileNotFoundError(f"model folder {model} {what}")
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            model,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            allow_patterns=list(HUB_PATTERNS),
        )
    )


def describe_model(path: Path) -> ModelDescription:
    config = _read_json(path / "config.json")
    if config is None:
        raise ValueError(f"{path} has no config.json; is it a Hugging Face model folder?")
    model_type = str(config.get("model_type", ""))
    pooling, normalize, st_max = _sentence_transformers_settings(path, model_type)
    context = int(config.get("max_position_embeddings", 512))
    if model_type == "qwen3":
        context = min(context, QWEN3_CONTEXT)
    return ModelDescription(
        path=path,
        model_type=model_type,
        hidden_size=int(config["hidden_size"]),
        vocab_size=int(config["vocab_size"]),
        pooling=pooling,
        normalize_by_default=normalize,
        max_input_tokens=min(st_max, context) if st_max else context,
        task=detected_task(path, config),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def detected_task(path: Path, config: dict[str, Any]) -> Task:
    """A Qwen3 causal LM without sentence-transformers files is a reranker (Qwen3-Reranker
    scores with its LM head); everything else embeds. A spec's or flag's task overrides it."""
    causal = "Qwen3ForCausalLM" in (config.get("architectures") or [])
    if config.get("model_type") == "qwen3" and causal and not (path / "modules.json").is_file():
        return Task.RERANK
    return Task.EMBED


def _sentence_transformers_settings(
    path: Path, model_type: str
) -> tuple[PoolingMode, bool, int | None]:
    modules = _read_json(path / "modules.json")
    st_config = _read_json(path / "sentence_bert_config.json") or {}
    max_seq = st_config.get("max_seq_length")
    if modules is None:
        # No sentence-transformers files: Qwen3-Embedding's convention, else mean pooling.
        mode = PoolingMode.LAST_TOKEN if model_type == "qwen3" else PoolingMode.MEAN
        return mode, True, int(max_seq) if max_seq else None
    unsupported = {m["type"] for m in modules} - _SUPPORTED_MODULES
    if unsupported:
        raise ValueError(f"unsupported sentence-transformers modules: {sorted(unsupported)}")
    pooling_module = next(
        (m for m in modules if m["type"].endswith(".Pooling")), {"path": "1_Pooling"}
    )
    pooling_config = _read_json(path / pooling_module["path"] / "config.json") or {}
    mode = _pooling_mode(pooling_config, model_type)
    normalize = any(m["type"].endswith(".Normalize") for m in modules)
    return mode, normalize, int(max_seq) if max_seq else None


def _pooling_mode(pooling_config: dict[str, Any], model_type: str) -> PoolingMode:
    if pooling_config.get("pooling_mode_lasttoken"):
        return PoolingMode.LAST_TOKEN
    if pooling_config.get("pooling_mode_cls_token"):
        return PoolingMode.CLS
    if pooling_config.get("pooling_mode_mean_tokens"):
        return PoolingMode.MEAN
    named = pooling_config.get("pooling_mode")
    if isinstance(named, str) and named in {m.value for m in PoolingMode}:
        return PoolingMode(named)
    if any(
        pooling_config.get(k)
        for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ):
        raise ValueError(f"unsupported pooling configuration: {pooling_config}")
    return PoolingMode.LAST_TOKEN if model_type == "qwen3" else PoolingMode.MEAN


def vocabulary_ids(path: Path, tokens: Sequence[str]) -> tuple[int, ...]:
    """The ids of whole tokens ("yes", "no") from the folder's tokenizer files, without
    building a tokenizer (a reranker's engine process has none)."""
    found: dict[str, int] = {}
    spec = _read_json(path / "tokenizer.json")
    if isinstance(spec, dict):
        found.update((t["content"], int(t["id"])) for t in spec.get("added_tokens") or [])
        vocab = (spec.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            found = {**vocab, **found}
    if not found:
        found = _read_json(path / "vocab.json") or {}
    missing = [t for t in tokens if t not in found]
    if missing:
        raise ValueError(f"the tokenizer in {path} has no token for {missing}")
    return tuple(int(found[t]) for t in tokens)


def fingerprint(path: Path) -> str:
    """sha256 over the descriptor files and, for each weight file, its name, size, header and
    three 1 MiB windows (start, middle, end): changes when any file is swapped or rewritten,
    yet costs milliseconds on 8 GB of weights."""
    digest = descriptor_digest(path)
    weights = sorted(p for p in path.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES))
    if not weights:
        raise ValueError(f"{path} holds no weight files (*.safetensors or *.bin)")
    for file in weights:
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            for offset in (0, max(0, size // 2 - _SAMPLE_BYTES // 2), max(0, size - _SAMPLE_BYTES)):
                handle.seek(offset)
                digest.update(handle.read(_SAMPLE_BYTES))
    return "sha256:" + digest.hexdigest()[:32]


def descriptor_digest(path: Path) -> hashlib._Hash:
    """sha256 over the descriptor files (config, pooling, tokenizer), to be extended."""
    digest = hashlib.sha256()
    for name in _DESCRIPTOR_FILES:
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes())
    return digest


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    return json.loads(path.read_text())
