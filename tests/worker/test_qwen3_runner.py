"""Qwen3Runner (our packed forward pass) against transformers' Qwen3Model, on a tiny
random-weight checkpoint that uses the real Qwen3 tokenizer. CPU, fp32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from embedfleet_worker.model.runners.qwen3 import Qwen3Runner
from embedfleet_worker.model.runners.qwen3_attention import padded_heads, padded_length
from tests.modelzoo import minilm_dir

EOS = 151643  # <|endoftext|>: Qwen3-Embedding pools the hidden state at this appended token
CPU = torch.device("cpu")

TEXTS = [
    "Hi!",
    "What is the capital of France?",
    "Instruct: Given a web search query, retrieve relevant passages\nQuery: how do GPUs work",
    "北京是中华人民共和国的首都。它也是全国的政治和文化中心。",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Привет, как дела? Это тестовое предложение на русском языке.",
    "東京は日本の首都です。人口は約1400万人です。",
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "🙂 emoji, ümlauts and ñ: mixed Unicode text ✓",
    "Kubernetes operators reconcile desired state. " * 12,
    "A long passage about embeddings. Vectors capture meaning; cosine compares them. " * 20,
    "x",
]


def _tokenize(texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    from tests.modelzoo import qwen3_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())
    return [[*tokenizer(t, add_special_tokens=False)["input_ids"], EOS] for t in texts]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.fixture(scope="module")
def runner(tiny_qwen3_dir: Path) -> Qwen3Runner:
    return Qwen3Runner.from_pretrained(tiny_qwen3_dir, device=CPU, dtype=torch.float32)


def _reference(model_dir: Path, sequences: list[list[int]]) -> torch.Tensor:
    """transformers' Qwen3Model on a left-padded batch, pooled at the last position, which left
    padding makes every sequence's last real token (the official Qwen3-Embedding recipe)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[EOS] * (width - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    with torch.inference_mode():
        hidden = model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden[:, -1].float()


def test_parity_with_transformers(runner: Qwen3Runner, tiny_qwen3_dir: Path) -> None:
    sequences = _tokenize(TEXTS)
    lengths = sorted(len(s) for s in sequences)
    assert lengths[0] <= 3, lengths
    assert lengths[-1] >= 250, lengths
    assert runner.attention_backend == "sdpa"

    ours = runner.embed(sequences)  # one packed call for all of them
    expected = _reference(tiny_qwen3_dir, sequences)

    assert ours.shape == (len(TEXTS), 64)
    assert ours.dtype == torch.float32
    cosines = _cosine(ours, expected)
    assert cosines.min().item() >= 0.99999, cosines
    assert (ours - expected).abs().max().item() < 1e-5


def test_batch_invariance(runner: Qwen3Runner) -> None:
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 200, (64,), generator=generator).tolist()
    batch = [[*torch.randint(0, EOS, (n,), generator=generator).tolist(), EOS] for n in lengths]
    target = _tokenize(["Batch invariance: the same input gives the same vector anywhere."])[0]
    alone = runner.embed([target])[0]
    for position in (0, 17, 63):
        packed = [*batch[:position], target, *batch[position + 1 :]]
        assert len(packed) == 64
        vector = runner.embed(packed)[position]
        assert _cosine(vector, alone).item() >= 0.99999
        assert torch.allclose(vector, alone, atol=1e-5)


def test_stepped_forward_runs_half_layers_and_matches_embed(runner: Qwen3Runner) -> None:
    """The engine runs waiting queries between a bulk batch's steps: each step is half a
    layer (attention, then MLP), and stepping gives exactly the one-call vectors."""
    sequences = _tokenize(TEXTS)
    forward = runner.start(sequences)
    steps = 0
    with torch.inference_mode():
        while not forward.step():
            steps += 1
            assert forward.layer == steps // 2
        stepped = forward.result()
    assert steps + 1 == 2 * len(runner.layers)
    assert forward.step()  # done stays done
    torch.testing.assert_close(stepped, runner.embed(sequences), rtol=0, atol=0)


def _copy_checkpoint(source: Path, target: Path) -> dict[str, torch.Tensor]:
    shutil.copytree(source, target)
    (target / "model.safetensors").unlink()
    return load_file(source / "model.safetensors")


def test_prefixed_causal_lm_checkpoint(
    runner: Qwen3Runner, tiny_qwen3_dir: Path, tmp_path: Path
) -> None:
    # A Qwen3ForCausalLM checkpoint: "model." prefix and an lm_head that must be ignored.
    weights = _copy_checkpoint(tiny_qwen3_dir, tmp_path / "causal")
    prefixed = {f"model.{key}": value for key, value in weights.items()}
    prefixed["lm_head.weight"] = torch.randn_like(weights["embed_tokens.weight"])
    save_file(prefixed, tmp_path / "causal" / "model.safetensors", metadata={"format": "pt"})
    sequences = _tokenize(TEXTS[:4])
    loaded = Qwen3Runner.from_pretrained(tmp_path / "causal", device=CPU, dtype=torch.float32)
    assert torch.equal(loaded.embed(sequences), runner.embed(sequences))


def test_sharded_checkpoint(runner: Qwen3Runner, tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    weights = _copy_checkpoint(tiny_qwen3_dir, tmp_path / "sharded")
    keys = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: weights[k] for k in shard_keys}, tmp_path / "sharded" / name)
        weight_map.update(dict.fromkeys(shard_keys, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index))
    sequences = _tokenize(TEXTS[:4])
    loaded = Qwen3Runner.from_pretrained(tmp_path / "sharded", device=CPU, dtype=torch.float32)
    assert torch.equal(loaded.embed(sequences), runner.embed(sequences))


def test_rejects_non_qwen3_config() -> None:
    with pytest.raises(ValueError, match="not a Qwen3 checkpoint"):
        Qwen3Runner.from_pretrained(minilm_dir(), device=CPU, dtype=torch.float32)


def test_rejects_missing_weights(tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    weights = _copy_checkpoint(tiny_qwen3_dir, tmp_path / "partial")
    del weights["layers.1.mlp.down_proj.weight"]
    save_file(weights, tmp_path / "partial" / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks 1 weights.*layers\.1\.mlp\.down_proj"):
        Qwen3Runner.from_pretrained(tmp_path / "partial", device=CPU, dtype=torch.float32)


def test_input_validation(runner: Qwen3Runner) -> None:
    empty = runner.embed([])
    assert empty.shape == (0, 64)
    assert empty.dtype == torch.float32
    with pytest.raises(ValueError, match="empty token sequence"):
        runner.embed([[1, 2], []])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        runner.embed([[1, runner.shape.vocab_size]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        runner.embed([[-1, 5]])


@pytest.mark.parametrize(("length", "padded"), [(100, 128), (1024, 1024), (1, 64)])
def test_end_padding_leaves_causal_attention_exact(length: int, padded: int) -> None:
    """Long sequences on a GPU are padded to a few lengths (one cuDNN plan each): the rows of
    the real positions must not change, since none of them attends to a later position."""
    generator = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(length, heads, 16, generator=generator) for heads in (4, 2, 2))
    plain = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(0, 1)[None] for t in (q, k, v)), is_causal=True, enable_gqa=True
    )
    padded_out = torch.nn.functional.scaled_dot_product_attention(
        *(padded_heads(t, padded) for t in (q, k, v)), is_causal=True, enable_gqa=True
    )
    assert padded_out.shape == (1, 4, padded, 16)
    torch.testing.assert_close(padded_out[:, :, :length], plain, rtol=1e-5, atol=1e-5)


def test_padded_lengths_are_few() -> None:
    assert [padded_length(n) for n in (4096, 4097, 5000, 8192, 40960)] == [
        4096, 5120, 5120, 8192, 40960,
    ]  # fmt: skip
