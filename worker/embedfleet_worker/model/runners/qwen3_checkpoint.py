"""A Qwen3 checkpoint as the runner reads it: the parts of config.json the forward pass needs,
the weight names, and the safetensors files (single or sharded) they come from."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import safe_open

from embedfleet_worker.model.safetensors_reads import read_rows, read_tensors


@dataclass(frozen=True)
class Qwen3Shape:
    """The parts of config.json that the forward pass needs."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    attention_bias: bool
    max_positions: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Qwen3Shape:
        if config.get("model_type") != "qwen3":
            raise ValueError(f"not a Qwen3 checkpoint: model_type={config.get('model_type')!r}")
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {config['hidden_act']!r}")
        if config.get("use_sliding_window"):
            raise ValueError("sliding-window attention is not supported")
        # transformers 5 keeps RoPE settings in rope_parameters; 4.x in rope_theta/rope_scaling.
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"unsupported RoPE type {rope_type!r}")
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise ValueError(f"{heads} attention heads not divisible by {kv_heads} kv heads")
        hidden = int(config["hidden_size"])
        return cls(
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            attention_bias=bool(config.get("attention_bias", False)),
            max_positions=int(config.get("max_position_embeddings", 40960)),
        )


def weight_names(shape: Qwen3Shape) -> list[str]:
    """The checkpoint keys the runner reads (without Qwen3ForCausalLM's "model." prefix)."""
    per_layer = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        *(f"self_attn.{p}_proj.weight" for p in "qkvo"),
        *(f"self_attn.{p}_proj.bias" for p in ("qkvo" if shape.attention_bias else "")),
        "self_attn.q_norm.weight",
        "self_attn.k_norm.weight",
        *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
    ]
    layers = [f"layers.{i}.{n}" for i in range(shape.num_layers) for n in per_layer]
    return ["embed_tokens.weight", "norm.weight", *layers]


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"no config.json in {model_dir}")
    return cast(dict[str, Any], json.loads(path.read_text()))


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file holding it (single file or sharded)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return {key: model_dir / name for key, name in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise ValueError(f"no model.safetensors or model.safetensors.index.json in {model_dir}")
    with safe_open(str(single), framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)


def load_score_rows(model_dir: Path, tokens: tuple[int, int], device: torch.device) -> torch.Tensor:
    """The LM head's rows for two tokens (a reranker's "yes" and "no"), [2, hidden] as stored:
    only these two of its 151K rows are read, and kept."""
    files = _weight_files(model_dir)
    name = next((n for n in ("lm_head.weight", "model.embed_tokens.weight", "embed_tokens.weight")
                 if n in files), None)  # fmt: skip  # the head, or the embedding it is tied to
    if name is None:
        raise ValueError(f"checkpoint in {model_dir} has no lm_head.weight for the scores")
    return read_rows(files[name], name, list(tokens), device)


def load_weights(
    model_dir: Path, names: list[str], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    files = _weight_files(model_dir)
    # Qwen3Model checkpoints have bare keys, Qwen3ForCausalLM ones a "model." prefix (and an
    # lm_head, which we never ask for).
    source = {name: name if name in files else f"model.{name}" for name in names}
    missing = [name for name, key in source.items() if key not in files]
    if missing:
        raise ValueError(f"checkpoint in {model_dir} lacks {len(missing)} weights: {missing[:5]}")
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[source[name]], []).append(name)
    weights: dict[str, torch.Tensor] = {}
    for path, file_names in by_file.items():
        read = read_tensors(path, [source[name] for name in file_names], device)
        for name in file_names:
            weights[name] = read.pop(source[name]).to(dtype)  # a copy only if dtypes differ
    return weights
