"""Qwen3 (Qwen3-Embedding) forward pass on packed sequences, with last-token pooling.

Our own implementation of transformers' Qwen3Model, so a batch is one concatenation of all its
sequences (no padding): attention stays inside each sequence and RoPE positions restart at 0
for each one. Weights are read straight from the Hugging Face safetensors checkpoint."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from embedfleet_worker.engine.pooling import PoolingMode, pool_packed
from embedfleet_worker.model.runners.qwen3_attention import (
    GatheredKeys,
    packed_attention,
)
from embedfleet_worker.model.runners.qwen3_checkpoint import (
    Qwen3Shape,
    load_score_rows,
    load_weights,
    read_config,
    weight_names,
)
from embedfleet_worker.model.runners.qwen3_ops import LayerOps, compile_available, rms_norm
from embedfleet_worker.model.runners.shared_prefixes import PrefixPlan, plan_shared_prefixes


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


@dataclass
class PackedForward:
    """One packed batch in flight, one layer per `step()`: the engine runs waiting queries
    between the layers of a long bulk batch instead of after all of them."""

    runner: Qwen3Runner
    cu_seqlens: torch.Tensor
    lengths: list[int]
    cos: torch.Tensor
    sin: torch.Tensor
    hidden: torch.Tensor  # the fp32 residual stream
    normed: torch.Tensor  # the next sublayer's normed input, in the model dtype
    max_len: int | None = None  # a static bound (CUDA graphs) instead of max(lengths)
    keys: GatheredKeys | None = None  # shared prefixes: each sequence's keys, gathered
    pooled: int | None = None  # shared prefixes: the sequences to pool (the prefixes follow)
    layer: int = 0
    # the layer's attention half has run: (residual stream, the MLP's normed input)
    attended: tuple[torch.Tensor, torch.Tensor] | None = None
    in_flight: Any = None  # the CUDA event of the previous step

    def step(self) -> bool:
        """Runs the next half layer (attention, then MLP); True once every layer has run. On a
        GPU it returns once the previous half has finished, so at most two halves are queued:
        a query run between steps waits for those (one layer's time), not for every layer the
        CPU could have queued ahead. Whole layers as steps let a query wait up to two layers,
        23 ms of a 16K-token batch of the 4B model on an H200."""
        if self.done:
            return True
        self._advance()
        if self.hidden.is_cuda:
            finished = torch.cuda.Event()  # type: ignore[no-untyped-call]
            finished.record()
            if self.in_flight is not None:
                self.in_flight.synchronize()
            self.in_flight = finished
        return self.done

    @property
    def done(self) -> bool:
        return self.layer >= len(self.runner.layers)

    def _advance(self) -> None:
        if self.attended is None:
            self.attended = self.runner._attention_half(self, self.layer)
            return
        self.hidden, self.normed = self.runner._mlp_half(self.layer, *self.attended)
        self.attended = None
        self.layer += 1

    def finish(self) -> None:
        """Runs the remaining layers at full speed (no waiting between them)."""
        while not self.done:
            self._advance()

    def result(self) -> torch.Tensor:
        self.finish()
        cu = self.cu_seqlens if self.pooled is None else self.cu_seqlens[: self.pooled + 1]
        last = pool_packed(self.hidden, cu, PoolingMode.LAST_TOKEN)
        return self.runner.final_norm_rows(last)


class Qwen3Runner:
    """EmbeddingRunner for Qwen3 checkpoints: packed batches, last-token pooling."""

    pooling: PoolingMode = PoolingMode.LAST_TOKEN

    def __init__(
        self,
        shape: Qwen3Shape,
        weights: MutableMapping[str, torch.Tensor],
        *,
        device: torch.device,
        dtype: torch.dtype,
        compile_ops: bool | None = None,
        fused_norms: bool = False,
        score_rows: torch.Tensor | None = None,
        share_prefixes: bool = False,
    ) -> None:
        """`weights` is consumed: each layer's tensors are popped as they are fused, so
        loading never holds two copies. `compile_ops` (default: on CUDA with Triton) fuses
        the pointwise work with torch.compile. `score_rows` (a reranker): the LM head's rows
        for "yes" and "no"; each sequence then gives one number, P(yes) over the two."""
        self.shape = shape
        self.share_prefixes = share_prefixes  # shared_prefixes.py; off: every input whole
        self.hidden_size = shape.hidden_size if score_rows is None else 1
        # log_softmax over (no, yes) then exp is sigmoid(logit_yes - logit_no): one dot
        # product with the difference of the two rows, in fp32.
        self.score_direction = (
            None if score_rows is None else (score_rows[0].float() - score_rows[1].float())
        )
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
        # Eager until preparation() has compiled the fused kernels (on CPU: always eager).
        self.compile_wanted = compile_available(device) if compile_ops is None else compile_ops
        self.fused_norms = fused_norms
        self.ops = LayerOps(compiled=False)
        self.embed_tokens = weights.pop("embed_tokens.weight")
        self.final_norm = weights.pop("norm.weight")
        self.layers = [self._layer(weights, f"layers.{i}.") for i in range(shape.num_layers)]
        self.inv_freq = 1.0 / (
            shape.rope_theta
            ** (
                torch.arange(0, shape.head_dim, 2, dtype=torch.float32, device=device)
                / shape.head_dim
            )
        )
        self.scale = 1.0 / math.sqrt(shape.head_dim)
        self.graphs: Any = None  # SmallBatchGraphs once preparation() has begun capturing
        self.prepare_seconds: dict[str, float] = {}  # preparation's phases, for the log
        self.planned_threads: set[int] = set()  # threads whose attention plans are built

    @classmethod
    def from_pretrained(
        cls,
        model_dir: Path,
        *,
        device: torch.device,
        dtype: torch.dtype,
        fused_norms: bool = False,
        score_tokens: tuple[int, int] | None = None,
        share_prefixes: bool = False,
    ) -> Qwen3Runner:
        """`score_tokens` (a reranker): the ids of "yes" and "no"."""
        shape = Qwen3Shape.from_config(read_config(model_dir))
        with torch.inference_mode():
            weights = load_weights(model_dir, weight_names(shape), device, dtype)
            rows = None
            if score_tokens is not None:
                rows = load_score_rows(model_dir, score_tokens, device).to(dtype)
            return cls(shape, weights, device=device, dtype=dtype, fused_norms=fused_norms,
                       score_rows=rows, share_prefixes=share_prefixes)  # fmt: skip

    def preparation(self) -> Iterator[bool]:
        """Compiling the fused kernels, the long inputs' attention plans and CUDA graphs for
        small batches (CUDA only), in short steps the engine runs after Ready: see
        qwen3_preparation. Until then the runner serves eagerly.

        Run the steps on the thread that runs the requests. cuDNN's attention plans are kept
        per thread: plans built on a loading thread left a fresh worker's first 8K, 12K and
        16K inputs 60-80 ms slower than the next ones of their length (H200)."""
        from embedfleet_worker.model.runners.qwen3_preparation import preparation_steps

        return preparation_steps(self)

    def prepare(self) -> None:
        """All of `preparation` at once, on this thread."""
        from embedfleet_worker.model.runners.qwen3_preparation import prepare_fully

        prepare_fully(self)

    def _layer(self, w: MutableMapping[str, torch.Tensor], p: str) -> _Layer:
        a = p + "self_attn."
        bias = self.shape.attention_bias
        qkv = [w.pop(f"{a}{x}_proj.weight") for x in "qkv"]
        qkv_bias = [w.pop(f"{a}{x}_proj.bias") for x in "qkv"] if bias else None
        gate_up = [w.pop(p + "mlp.gate_proj.weight"), w.pop(p + "mlp.up_proj.weight")]
        return _Layer(
            input_norm=w.pop(p + "input_layernorm.weight"),
            qkv_weight=torch.cat(qkv),
            qkv_bias=torch.cat(qkv_bias) if qkv_bias else None,
            q_norm=w.pop(a + "q_norm.weight"),
            k_norm=w.pop(a + "k_norm.weight"),
            o_weight=w.pop(a + "o_proj.weight"),
            o_bias=w.pop(a + "o_proj.bias") if bias else None,
            post_norm=w.pop(p + "post_attention_layernorm.weight"),
            gate_up_weight=torch.cat(gate_up),
            down_weight=w.pop(p + "mlp.down_proj.weight"),
        )

    # ----------------------------------------------------------------------- forward
    def _check(self, sequences: Sequence[Sequence[int]]) -> list[int]:
        lengths = [len(s) for s in sequences]
        if min(lengths) == 0:
            raise ValueError("empty token sequence")
        if max(lengths) > self.shape.max_positions:
            raise ValueError(f"sequence of {max(lengths)} tokens exceeds max_position_embeddings")
        for sequence in sequences:
            if min(sequence) < 0 or max(sequence) >= self.shape.vocab_size:
                raise ValueError(f"token id outside the vocabulary [0, {self.shape.vocab_size})")
        return lengths

    def embed(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        if not sequences:
            return torch.empty(0, self.hidden_size, dtype=torch.float32, device=self.device)
        lengths = self._check(sequences)
        with torch.inference_mode():
            if self.graphs is not None and self.graphs.fits(lengths):
                return cast(torch.Tensor, self.graphs.run(sequences, lengths))
            return self._start(sequences, lengths).result()

    def start(self, sequences: Sequence[Sequence[int]]) -> PackedForward:
        """A batch to run layer by layer (see PackedForward); call under inference_mode."""
        return self._start(sequences, self._check(sequences))

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        # [T, 1, head_dim]: broadcast over heads
        return emb.cos().to(self.dtype)[:, None, :], emb.sin().to(self.dtype)[:, None, :]

    def _start(self, sequences: Sequence[Sequence[int]], lengths: list[int]) -> PackedForward:
        plan = plan_shared_prefixes(sequences) if self.share_prefixes else None
        if plan is not None:
            return self._start_shared(plan)
        flat = list(itertools.chain.from_iterable(sequences))
        ids = torch.tensor(flat, dtype=torch.long, device=self.device)
        # Position of each token within its own sequence: packing must not shift RoPE.
        positions = torch.tensor(
            [i for n in lengths for i in range(n)], dtype=torch.long, device=self.device
        )
        cu_seqlens = torch.tensor(
            [0, *itertools.accumulate(lengths)], dtype=torch.int32, device=self.device
        )
        return self.begin(ids, positions, cu_seqlens, lengths)

    def _start_shared(self, plan: PrefixPlan) -> PackedForward:
        """Inputs that share a prefix compute it once and attend to its keys and values."""
        device, parts = self.device, plan.parts
        ids = torch.tensor(list(itertools.chain.from_iterable(parts)), device=device)
        positions = torch.tensor(
            [first + i for part, first in zip(parts, plan.first_positions, strict=True)
             for i in range(len(part))], device=device,
        )  # fmt: skip
        cu_seqlens = torch.tensor(plan.offsets, dtype=torch.int32, device=device)
        key_lengths = [sum(end - start for start, end in spans) for spans in plan.key_ranges]
        keys = GatheredKeys(
            torch.tensor(
                [t for spans in plan.key_ranges for a, b in spans for t in range(a, b)],
                device=device,
            ),
            torch.tensor([0, *itertools.accumulate(key_lengths)], dtype=torch.int32, device=device),
            key_lengths,
        )
        forward = self.begin(ids, positions, cu_seqlens, [len(p) for p in parts], keys=keys)
        forward.pooled = plan.inputs  # the prefixes, packed after the inputs, are not pooled
        return forward

    def begin(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        cu_seqlens: torch.Tensor,
        lengths: list[int],
        max_len: int | None = None,
        keys: GatheredKeys | None = None,
    ) -> PackedForward:
        """A packed batch from tensors already on the device (the CUDA graphs' static
        buffers, or `_start`'s), before its first layer."""
        cos, sin = self.rope(positions)
        # The residual stream stays fp32 (matmuls run in the model dtype): 36 layers of bf16
        # residual adds drift measurably from the fp32 reference, fp32 adds cost ~nothing.
        hidden = F.embedding(ids, self.embed_tokens).float()
        normed = self.ops.rms_norm(
            hidden, self.layers[0].input_norm, self.shape.rms_norm_eps, self.dtype
        )
        return PackedForward(
            self, cu_seqlens, lengths, cos, sin, hidden, normed, max_len, keys=keys
        )

    def final_norm_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The final norm, only for the pooled rows (the only ones that matter), in fp32; for
        a reranker, each row's score."""
        normed = rms_norm(rows, self.final_norm.float(), self.shape.rms_norm_eps)
        if self.score_direction is None:
            return normed
        return torch.sigmoid(normed @ self.score_direction)[:, None]

    def _attention_half(self, f: PackedForward, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention and its residual add: (the residual stream, the MLP's normed input)."""
        s, layer, ops = self.shape, self.layers[index], self.ops
        eps = s.rms_norm_eps
        qkv = F.linear(f.normed, layer.qkv_weight, layer.qkv_bias)
        q, k, v = ops.qk_norm_rope(
            qkv, layer.q_norm, layer.k_norm, f.cos, f.sin, s.num_heads, s.num_kv_heads, eps
        )
        attended = packed_attention(
            q, k, v, f.cu_seqlens, f.lengths, backend=self.attention_backend, scale=self.scale,
            max_len=f.max_len, keys=f.keys,
        )  # fmt: skip
        out = F.linear(attended.reshape(-1, s.num_heads * s.head_dim), layer.o_weight, layer.o_bias)
        return ops.add_rms_norm(f.hidden, out, layer.post_norm, eps)

    def _mlp_half(
        self, index: int, hidden: torch.Tensor, normed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP and its residual add: (the residual stream, the next layer's normed input)."""
        layer, ops, eps = self.layers[index], self.ops, self.shape.rms_norm_eps
        mlp = F.linear(ops.silu_mul(F.linear(normed, layer.gate_up_weight)), layer.down_weight)
        if index + 1 < len(self.layers):
            return ops.add_rms_norm(hidden, mlp, self.layers[index + 1].input_norm, eps)
        return hidden + mlp.float(), normed
