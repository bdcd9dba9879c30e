"""Shared prefixes (model/runners/shared_prefixes.py): the plan, table-driven, and the Qwen3
runner with them on against off on a tiny random Qwen3 with the real tokenizer (fp32, CPU):
queries with an instruction and a reranker's pairs get the vectors and scores they get whole,
whole batches and layer by layer, while computing fewer tokens."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import pytest
import torch

from embedfleet_worker.engine.options import EmbedOptions, InputType
from embedfleet_worker.engine.reranking import PairEncoder
from embedfleet_worker.model.loader import ModelSpec, load_encoder, load_model
from embedfleet_worker.model.runners.shared_prefixes import PrefixPlan, plan_shared_prefixes
from tests.modelzoo import make_tiny_qwen3_reranker

P = list(range(100, 120))  # a 20-token prefix


@pytest.mark.parametrize(
    ("sequences", "expected"),
    [
        ([[1, 2, 3], [1, 2, 4]], None),  # shorter than the minimum
        ([[*P, 1], [*range(200, 221)]], None),  # nothing in common
        ([[*P, 1, 2], [7, 8]], None),  # one input alone
        # two inputs: each its own part after the prefix, then the prefix once
        ([[*P, 1, 2], [*P, 3]],
         PrefixPlan(2, [[1, 2], [3], P], [20, 20, 0], [[(3, 23), (0, 2)], [(3, 23), (2, 3)],
                                                        [(3, 23)]])),
        # an input that is the prefix plus one token keeps that token; the prefix is shorter
        # by one where an input would have nothing left
        ([[*P, 1], [*P, 1, 2]],
         PrefixPlan(2, [[1], [1, 2], P], [20, 20, 0], [[(3, 23), (0, 1)], [(3, 23), (1, 3)],
                                                        [(3, 23)]])),
        # an unshared input keeps its place between the shared ones
        ([[*P, 5], [9, 9], [*P, 6]],
         PrefixPlan(3, [[5], [9, 9], [6], P], [20, 0, 20, 0],
                    [[(4, 24), (0, 1)], [(1, 3)], [(4, 24), (3, 4)], [(4, 24)]])),
    ],
)  # fmt: skip
def test_plan(sequences: list[list[int]], expected: PrefixPlan | None) -> None:
    assert plan_shared_prefixes(sequences, min_prefix=16) == expected


def test_the_plan_computes_each_prefix_once() -> None:
    queries = [[*P, *P, 7 + i, 8, 9] for i in range(10)]  # a 40-token common prefix
    plan = plan_shared_prefixes(queries)
    assert plan is not None
    assert plan.computed_tokens == 10 * 3 + 40
    assert sum(len(q) for q in queries) == 430


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen3_reranker(tmp_path_factory.mktemp("reranker"))


def runners(folder: Path, task: Literal["embed", "rerank"]) -> tuple[Any, Any, PairEncoder]:
    """The runner with every input whole, the same with shared prefixes, and the pairs."""
    spec = ModelSpec(model=str(folder), device="cpu", dtype="float32", task=task)
    whole = load_model(spec, with_encoder=False).runner
    shared = load_model(replace(spec, share_prefixes=True), with_encoder=False).runner
    return whole, shared, PairEncoder(load_encoder(spec).encoder)


def test_rerank_scores_equal_with_the_prompt_computed_once(reranker_dir: Path) -> None:
    whole, shared, pairs = runners(reranker_dir, "rerank")
    documents = [f"Document {i}: " + "words " * (3 + 7 * i) for i in range(8)]
    sequences = pairs.encode("Which document is longest?", documents, EmbedOptions())
    plan = plan_shared_prefixes(sequences)
    assert plan is not None
    assert plan.computed_tokens < sum(map(len, sequences)) / 2
    ours = shared.embed(sequences)
    theirs = whole.embed(sequences)
    assert (ours - theirs).abs().max().item() <= 1e-6
    with torch.inference_mode():
        forward = shared.start(sequences)
        while not forward.step():
            pass
        stepped = forward.result()
    assert (stepped - theirs).abs().max().item() <= 1e-6


def test_queries_with_an_instruction_equal_their_whole_vectors(reranker_dir: Path) -> None:
    whole, shared, pairs = runners(reranker_dir, "embed")
    encoder = pairs.encoder
    task = "Given a web search query, retrieve relevant passages that answer the query"
    options = EmbedOptions(instruction=task, input_type=InputType.QUERY)
    texts = ["what is a panda", "capital of france", "how do rockets work", "x", "東京タワー"]
    sequences = encoder.encode(texts, options) + encoder.encode(
        ["no instruction here"], EmbedOptions()
    )
    assert plan_shared_prefixes(sequences) is not None
    ours = shared.embed(sequences)
    theirs = whole.embed(sequences)
    cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    assert cosine.min().item() >= 0.99999, cosine
