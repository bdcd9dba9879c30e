"""Qwen3 (Qwen3-Embedding) forward pass on packed sequences, with last-token pooling.

Our own implementation of transformers' Qwen3Model, so a batch is one concatenation of all its
sequences (no padding): attention stays inside each sequence and RoPE positions restart at 0
for each one. Weights are read straight from the Hugging Face safetensors checkpoint."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors import safe_open

from embedfleet_worker.pooling import PoolingMode, pool_packed


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


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    qkv_weight: torch.Tensor  # q, k and v projections fused: one matmul instead of three
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    o_weight: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up_weight: torch.Tensor  # gate and up projections fused likewise
    down_weight: torch.Tensor


def _read_config(model_dir: Path) -> dict[str, Any]:
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


def _load_weights(
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
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            for name in file_names:
                weights[name] = handle.get_tensor(source[name]).to(dtype)
    return weights


def _rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype | None = None
) -> torch.Tensor:
    # As Qwen3RMSNorm: statistics in fp32, cast to the compute dtype, then scale.
    normed = x.float()
    normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(dtype or x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Qwen3Runner:
    """EmbeddingRunner for Qwen3 checkpoints: packed batches, last-token pooling."""

    pooling: PoolingMode = PoolingMode.LAST_TOKEN

    def __init__(
        self,
        shape: Qwen3Shape,
        weights: Mapping[str, torch.Tensor],
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.shape = shape
        self.hidden_size = shape.hidden_size
        self.device = device
        self.dtype = dtype
        self.attention_backend = (
            "flash"
            if device.type == "cuda"
            and dtype in (torch.float16, torch.bfloat16)
            and shape.head_dim % 8 == 0
            and shape.head_dim <= 256
            and torch.backends.cuda.is_flash_attention_available()
            else "sdpa"
        )
        self.embed_tokens = weights["embed_tokens.weight"]
        self.final_norm = weights["norm.weight"]
        self.layers = [self._layer(weights, f"layers.{i}.") for i in range(shape.num_layers)]
        self.inv_freq = 1.0 / (
            shape.rope_theta
            ** (
                torch.arange(0, shape.head_dim, 2, dtype=torch.float32, device=device)
                / shape.head_dim
            )
        )
        self.scale = 1.0 / math.sqrt(shape.head_dim)

    @classmethod
    def weight_names(cls, shape: Qwen3Shape) -> list[str]:
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

    @classmethod
    def from_pretrained(
        cls, model_dir: Path, *, device: torch.device, dtype: torch.dtype
    ) -> Qwen3Runner:
        shape = Qwen3Shape.from_config(_read_config(model_dir))
        with torch.inference_mode():
            weights = _load_weights(model_dir, cls.weight_names(shape), device, dtype)
            return cls(shape, weights, device=device, dtype=dtype)

    def _layer(self, w: Mapping[str, torch.Tensor], p: str) -> _Layer:
        a = p + "self_attn."
        bias = self.shape.attention_bias
        return _Layer(
            input_norm=w[p + "input_layernorm.weight"],
            qkv_weight=torch.cat([w[f"{a}{x}_proj.weight"] for x in "qkv"]),
            qkv_bias=torch.cat([w[f"{a}{x}_proj.bias"] for x in "qkv"]) if bias else None,
            q_norm=w[a + "q_norm.weight"],
            k_norm=w[a + "k_norm.weight"],
            o_weight=w[a + "o_proj.weight"],
            o_bias=w[a + "o_proj.bias"] if bias else None,
            post_norm=w[p + "post_attention_layernorm.weight"],
            gate_up_weight=torch.cat([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]]),
            down_weight=w[p + "mlp.down_proj.weight"],
        )

    def embed(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        if not sequences:
            return torch.empty(0, self.hidden_size, dtype=torch.float32, device=self.device)
        lengths = [len(s) for s in sequences]
        if min(lengths) == 0:
            raise ValueError("empty token sequence")
        if max(lengths) > self.shape.max_positions:
            raise ValueError(f"sequence of {max(lengths)} tokens exceeds max_position_embeddings")
        flat = list(itertools.chain.from_iterable(sequences))
        if min(flat) < 0 or max(flat) >= self.shape.vocab_size:
            raise ValueError(f"token id outside the vocabulary [0, {self.shape.vocab_size})")
        with torch.inference_mode():
            ids = torch.tensor(flat, dtype=torch.long, device=self.device)
            cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], device=self.device)
            residual = self._forward(ids, cu_seqlens, lengths)
            last = pool_packed(residual, cu_seqlens, PoolingMode.LAST_TOKEN)
            # The final norm only matters for the pooled rows; done in fp32.
            return _rms_norm(last, self.final_norm.float(), self.shape.rms_norm_eps)

    def _forward(
        self, ids: torch.Tensor, cu_seqlens: torch.Tensor, lengths: list[int]
    ) -> torch.Tensor:
        # Position of each token within its own sequence: packing must not shift RoPE.
        starts = torch.repeat_interleave(cu_seqlens[:-1], torch.tensor(lengths, device=self.device))
        positions = torch.arange(ids.numel(), device=self.device) - starts
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos().to(self.dtype)[:, None, :]  # [T, 1, head_dim], broadcast over heads
        sin = emb.sin().to(self.dtype)[:, None, :]
        cu32 = cu_seqlens.to(torch.int32)
        # The residual stream stays fp32 (matmuls run in the model dtype): 36 layers of bf16
        # residual adds drift measurably from the fp32 reference, fp32 adds cost ~nothing.
        hidden = F.embedding(ids, self.embed_tokens).float()
        for layer in self.layers:
            hidden = hidden + self._attention(layer, hidden, cos, sin, cu32, lengths)
            hidden = hidden + self._mlp(layer, hidden)
        return hidden

    def _attention(
        self,
        layer: _Layer,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu32: torch.Tensor,
        lengths: list[int],
    ) -> torch.Tensor:
        s, eps = self.shape, self.shape.rms_norm_eps
        x = _rms_norm(hidden, layer.input_norm, eps, self.dtype)
        qkv = F.linear(x, layer.qkv_weight, layer.qkv_bias)
        q_size, kv_size = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        q, k, v = qkv[:, :q_size], qkv[:, q_size : q_size + kv_size], qkv[:, q_size + kv_size :]
        # Per-head q/k norms come before RoPE, as in Qwen3Attention.
        q = _rms_norm(q.reshape(-1, s.num_heads, s.head_dim), layer.q_norm, eps)
        k = _rms_norm(k.reshape(-1, s.num_kv_heads, s.head_dim), layer.k_norm, eps)
        v = v.reshape(-1, s.num_kv_heads, s.head_dim)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if self.attention_backend == "flash":
            out = self._flash(q, k, v.contiguous(), cu32, max(lengths))
        else:
            out = self._sdpa(q, k, v, lengths)
        return F.linear(out.reshape(-1, q_size), layer.o_weight, layer.o_bias)

    def _flash(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu32: torch.Tensor, max_len: int
    ) -> torch.Tensor:
        # Varlen FlashAttention-2: [T, heads, head_dim] packed q/k/v, causal within each
        # cu_seqlens segment; GQA is native (kv heads only have to divide q heads).
        result = torch.ops.aten._flash_attention_forward(
            q, k, v, cu32, cu32, max_len, max_len, 0.0, True, False, scale=self.scale
        )
        return cast(torch.Tensor, result[0])

    def _sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]
    ) -> torch.Tensor:
        outputs = []
        for start, end in itertools.pairwise(itertools.accumulate(lengths, initial=0)):
            # [1, heads, len, head_dim] per sequence; is_causal masks within it only.
            qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
            out = F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, scale=self.scale, enable_gqa=True
            )
            outputs.append(out[0].transpose(0, 1))
        return torch.cat(outputs)

    def _mlp(self, layer: _Layer, hidden: torch.Tensor) -> torch.Tensor:
        x = _rms_norm(hidden, layer.post_norm, self.shape.rms_norm_eps, self.dtype)
        gate, up = F.linear(x, layer.gate_up_weight).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, layer.down_weight)
