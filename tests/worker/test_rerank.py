"""Reranking with a Qwen3 reranker (engine/reranking.py, the runner's score head) against a
straightforward transformers implementation of the recipe its authors publish (the
Qwen3-Reranker model card): same token ids, scores within 1e-5 in fp32 on CPU, for an LM head
of its own and one tied to the embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedfleet_worker.engine.options import EmbedOptions, with_truncation
from embedfleet_worker.engine.reranking import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, PairEncoder
from embedfleet_worker.model.files import Task, describe_model
from embedfleet_worker.model.loader import ModelSpec, load_encoder, load_model
from tests.modelzoo import make_tiny_qwen3_reranker, minilm_dir

QUERY = "What is the capital of China?"
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "北京是中华人民共和国的首都。",
    "Beijing " * 300,  # cut at its end when the context is short
]


@pytest.fixture(scope="module", params=[False, True], ids=["own-head", "tied-head"])
def reranker_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen3_reranker(tmp_path_factory.mktemp("reranker"), tied=request.param)


def reference_scores(
    folder: Path, pairs: list[tuple[str, str, str]], max_length: int
) -> tuple[list[list[int]], list[float]]:
    """The model card's code, with transformers: prompt, truncation, left padding, P(yes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(SUFFIX, add_special_tokens=False)
    texts = [f"<Instruct>: {i}\n<Query>: {q}\n<Document>: {d}" for i, q, d in pairs]
    inputs = tokenizer(texts, padding=False, truncation="longest_first",
                       return_attention_mask=False,
                       max_length=max_length - len(prefix) - len(suffix))  # fmt: skip
    ids = [prefix + x + suffix for x in inputs["input_ids"]]
    padded = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**padded).logits[:, -1, :]
    two = torch.stack([logits[:, no], logits[:, yes]], dim=1)
    return ids, torch.nn.functional.log_softmax(two, dim=1)[:, 1].exp().tolist()


@pytest.mark.parametrize("max_tokens", [None, 96])
def test_scores_equal_the_published_recipe(reranker_dir: Path, max_tokens: int | None) -> None:
    assert describe_model(reranker_dir).task is Task.RERANK
    spec = ModelSpec(model=str(reranker_dir), device="cpu", dtype="float32",
                     max_input_tokens=max_tokens)  # fmt: skip
    model = load_model(spec, with_encoder=False)
    assert model.runner.hidden_size == 1
    pairs = PairEncoder(load_encoder(spec).encoder)
    ours_ids = pairs.encode(QUERY, DOCUMENTS, EmbedOptions(normalize=False))
    ours = model.runner.embed(ours_ids)[:, 0].tolist()
    limit = max_tokens or 32768
    theirs_ids, theirs = reference_scores(
        reranker_dir, [(DEFAULT_INSTRUCTION, QUERY, d) for d in DOCUMENTS], limit
    )
    assert ours_ids == theirs_ids
    assert max(len(s) for s in ours_ids) <= limit
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1e-5, (ours, theirs)
    assert all(0.0 < s < 1.0 for s in ours)


def test_an_instruction_and_a_left_cut_keep_the_query(reranker_dir: Path) -> None:
    spec = ModelSpec(model=str(reranker_dir), device="cpu")
    pairs = PairEncoder(load_encoder(spec).encoder)
    document = "Beijing " * 300 + "THE END"
    task = "Find the capital"
    options = with_truncation(EmbedOptions(normalize=False), True, 80, "left")
    (cut,) = pairs.encode(QUERY, [document], options, task)
    (whole,) = pairs.encode(QUERY, [document], EmbedOptions(), task)
    suffix, prefix = len(pairs.template.suffix), len(pairs.template.prefix)
    assert len(cut) == 80
    assert cut[-suffix:] == list(pairs.template.suffix)  # the closing tokens stay
    # the prompt up to the document kept whole, then the document's end
    head = len(pairs.encoder.tokenize([f"<Instruct>: {task}\n<Query>: {QUERY}\n<Document>: "])[0])
    assert cut[: prefix + head - 1] == whole[: prefix + head - 1]
    assert cut[-suffix - 3 : -suffix] == whole[-suffix - 3 : -suffix]


def test_an_embedding_model_is_not_a_reranker(tiny_qwen3_dir: Path) -> None:
    assert describe_model(tiny_qwen3_dir).task is Task.EMBED
    spec = ModelSpec(model=str(minilm_dir()), device="cpu", task="rerank")
    with pytest.raises(ValueError, match="rerank needs a Qwen3 reranker"):
        load_model(spec)
