"""GPU parity (run on the GPU machine: `pytest -m gpu tests/gpu`): the packed flash-attention
Qwen3 runner in bf16 against transformers' Qwen3Model in bf16, on the real 0.6B and 4B
architectures with random weights, mixed lengths in one packed batch; and the async engine
end to end on CUDA."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any, cast

import pytest
import torch

from bench._systems import ARCHS, COMMON_ARCH
from embedfleet_worker.engine.executor import EmbeddingEngine, EngineConfig
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.engine.tokenization import InputEncoder, SequenceTemplate
from embedfleet_worker.model.runners.qwen3 import Qwen3Runner
from embedfleet_worker.model.runners.qwen3_checkpoint import Qwen3Shape

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ENDOFTEXT = 151643


def build(size: str) -> tuple[torch.nn.Module, Qwen3Runner]:
    from transformers import Qwen3Config, Qwen3Model

    # The benchmark's table of the real Qwen3-Embedding shapes is the one source for both.
    config = Qwen3Config(**COMMON_ARCH, **ARCHS[size], attn_implementation="sdpa")
    model = bf16_on_cuda(Qwen3Model, config)
    runner = Qwen3Runner(
        Qwen3Shape.from_config(config.to_dict()),
        model.state_dict(),
        device=torch.device("cuda"),
        dtype=torch.bfloat16,
    )
    return model, runner


def bf16_on_cuda(kind: Any, config: Any) -> torch.nn.Module:
    """A transformers model built in bf16 on the GPU with random weights (seed 0)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            return cast(torch.nn.Module, kind(config).eval())
    finally:
        torch.set_default_dtype(previous)


def reference(model: torch.nn.Module, sequences: list[list[int]]) -> torch.Tensor:
    width = max(map(len, sequences))
    ids = torch.tensor([[ENDOFTEXT] * (width - len(s)) + s for s in sequences], device="cuda")
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device="cuda")
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1].float()


@pytest.fixture(scope="module", params=["0.6b", "4b"])
def models(request: pytest.FixtureRequest) -> Iterator[tuple[torch.nn.Module, Qwen3Runner]]:
    yield build(request.param)
    torch.cuda.empty_cache()


def test_bf16_packed_runner_matches_transformers_bf16(
    models: tuple[torch.nn.Module, Qwen3Runner],
) -> None:
    model, runner = models
    assert runner.attention_backend == "flash"
    generator = torch.Generator().manual_seed(1)
    lengths = [1, 7, 16, 33, 120, 511, 512, 900, 2047, 64, 3, 250]
    sequences = [
        [*torch.randint(0, 151643, (n,), generator=generator).tolist(), ENDOFTEXT] for n in lengths
    ]
    runner.prepare()  # the path served once a worker has prepared (compiled kernels)
    assert runner.ops.compiled
    ours = runner.embed(sequences)
    theirs = torch.cat([reference(model, sequences[i : i + 4]) for i in range(0, 12, 4)])
    cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    # The fp32 truth on the same weights says which bf16 implementation drifts more.
    truth_model = copy.deepcopy(model).float()
    truth = torch.cat([reference(truth_model, sequences[i : i + 4]) for i in range(0, 12, 4)])
    del truth_model
    ours_vs_truth = torch.nn.functional.cosine_similarity(ours, truth, dim=-1).min().item()
    theirs_vs_truth = torch.nn.functional.cosine_similarity(theirs, truth, dim=-1).min().item()
    print(
        f"min cosine: embedfleet bf16 vs transformers bf16 {cosine.min().item():.6f}; "
        f"vs fp32 truth: embedfleet {ours_vs_truth:.6f}, transformers {theirs_vs_truth:.6f}"
    )
    assert cosine.min().item() >= 0.999
    assert ours_vs_truth >= 0.999


def test_engine_serves_on_cuda(models: tuple[torch.nn.Module, Qwen3Runner]) -> None:
    """Prepared on its compute thread as a served worker is (compilation, CUDA graphs, that
    thread's attention plans): 300 concurrent queries, their inputs staged in pinned memory
    for the graphs, and a long input."""
    model, runner = models
    encoder = InputEncoder(
        None,
        SequenceTemplate((), (ENDOFTEXT,), ENDOFTEXT),
        max_input_tokens=32768,
        vocab_size=151669,
    )
    engine = EmbeddingEngine(runner, encoder, EngineConfig(max_batch_tokens=16384))
    engine.start(warm_up=runner.prepare)
    try:
        assert runner.graphs is not None
        inputs = [[100 + i, 200 + i, 300 + i] * (1 + i % 50) for i in range(300)]

        async def together() -> list[torch.Tensor]:
            results = await asyncio.gather(*(engine.embed([x], EmbedOptions()) for x in inputs))
            return [torch.from_numpy(r.vectors[0]) for r in results]

        vectors = torch.stack(asyncio.run(together()))
        alone = torch.nn.functional.normalize(
            runner.embed([[*x, ENDOFTEXT] for x in inputs[:8]]).cpu(), dim=-1
        )
        cosine = torch.nn.functional.cosine_similarity(vectors[:8], alone, dim=-1)
        assert cosine.min().item() >= 0.999
        assert vectors.shape == (300, runner.hidden_size)
        long = [(7 * i) % 151643 for i in range(5000)]
        served = asyncio.run(engine.embed([long], EmbedOptions(normalize=False))).vectors
        truth = reference(model, [[*long, ENDOFTEXT]]).cpu()
        cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(served), truth, dim=-1)
        assert cosine.min().item() >= 0.999, cosine
    finally:
        engine.stop()


def test_graphs_long_sequences_and_stepping_match(
    models: tuple[torch.nn.Module, Qwen3Runner],
) -> None:
    """The fast paths compute what the eager packed path computes: CUDA-graph buckets for
    small batches, per-sequence SDPA for long inputs, and a batch advanced layer by layer."""
    model, runner = models
    runner.prepare()  # done already by the engine test's compute thread: this one's plans
    assert runner.ops.compiled
    assert runner.graphs is not None
    generator = torch.Generator().manual_seed(2)

    def tokens(n: int) -> list[int]:
        return [*torch.randint(0, 151643, (n - 1,), generator=generator).tolist(), ENDOFTEXT]

    # The last four: query batches in the buckets above 512 tokens, each padded up to its
    # bucket (8 to 28 padding tokens).
    for lengths in ([16], [1], [5, 40, 17], [64] * 8, [200, 311], [512], [8] * 119,
                    [20] * 47 + [7], [500, 400, 300], [512] * 5 + [100]):  # fmt: skip
        sequences = [tokens(n) for n in lengths]
        assert runner.graphs.fits(lengths)
        graphed = runner.embed(sequences)
        with torch.inference_mode():
            eager = runner.start(sequences).result()
        cosine = torch.nn.functional.cosine_similarity(graphed, eager, dim=-1)
        assert cosine.min().item() > 0.9999, (lengths, cosine)
        # Parity with transformers is the eager path's (the test above, at 0.999 on its mixed
        # batch); here a coarse guard that the graph did not, say, pool a padding row.
        theirs = reference(model, sequences)
        parity = torch.nn.functional.cosine_similarity(graphed, theirs, dim=-1)
        assert parity.min().item() >= 0.998, (lengths, parity)
    long = [tokens(6000)]
    ours = runner.embed(long)
    cosine = torch.nn.functional.cosine_similarity(ours, reference(model, long), dim=-1)
    assert cosine.min().item() >= 0.999, cosine


def test_queries_between_bulk_steps_match(models: tuple[torch.nn.Module, Qwen3Runner]) -> None:
    """Queries that arrive while a bulk batch runs step by step get the vectors they get
    alone, and so does the bulk."""
    _, runner = models
    runner.prepare()
    encoder = InputEncoder(
        None, SequenceTemplate((), (ENDOFTEXT,), ENDOFTEXT), max_input_tokens=32768,
        vocab_size=151669,
    )  # fmt: skip
    engine = EmbeddingEngine(runner, encoder, EngineConfig(max_batch_tokens=16384))
    bulk = [[1000 + i] * 999 for i in range(16)]
    queries = [[500 + i, 600 + i] * (4 + i) for i in range(12)]

    async def mixed() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        bulk_task = asyncio.ensure_future(engine.embed(bulk, EmbedOptions()))
        answers = []
        for query in queries:
            await asyncio.sleep(0.004)
            answers.append(asyncio.ensure_future(engine.embed([query], EmbedOptions())))
        done = await asyncio.gather(*answers)
        return (
            [torch.from_numpy(v) for v in (await bulk_task).vectors],
            [torch.from_numpy(r.vectors[0]) for r in done],
        )

    engine.start()
    try:
        bulk_vectors, query_vectors = asyncio.run(mixed())
        assert engine.interleaved_batches > 0
    finally:
        engine.stop()
    for got, sequences in ((bulk_vectors, bulk), (query_vectors, queries)):
        alone = torch.nn.functional.normalize(
            runner.embed([[*s, ENDOFTEXT] for s in sequences]).cpu(), dim=-1
        )
        cosine = torch.nn.functional.cosine_similarity(torch.stack(got), alone, dim=-1)
        assert cosine.min().item() >= 0.999, cosine
