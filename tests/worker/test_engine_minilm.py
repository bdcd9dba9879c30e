"""The engine on real all-MiniLM-L6-v2 weights: parity with sentence-transformers, semantics,
Matryoshka, concurrency without loss or mix-ups, cancellation and failure isolation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from embedfleet_worker.engine.errors import (
    BatchFailedError,
    EngineOverloadedError,
    EngineUnavailableError,
    InvalidInputError,
)
from embedfleet_worker.engine.executor import EmbeddingEngine, EngineConfig
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.model.loader import LoadedModel, ModelSpec, load_model
from tests.modelzoo import minilm_dir

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "x",
    "Long " + "and winding " * 150 + "road.",  # beyond 256 tokens: truncated like ST does
]


@pytest.fixture(scope="module")
def minilm() -> LoadedModel:
    return load_model(ModelSpec(model=str(minilm_dir()), device="cpu"))


def make_engine(model: LoadedModel, **config: Any) -> EmbeddingEngine:
    engine = EmbeddingEngine(
        model.runner,
        model.encoder,
        EngineConfig(**config),
        normalize_by_default=model.description.normalize_by_default,
    )
    engine.start()
    return engine


@pytest.fixture
def engine(minilm: LoadedModel) -> Iterator[EmbeddingEngine]:
    engine = make_engine(minilm, max_batch_tokens=2048)
    yield engine
    engine.stop()


def embed(engine: EmbeddingEngine, inputs: list[Any], **options: Any) -> np.ndarray:
    return asyncio.run(engine.embed(inputs, EmbedOptions(**options))).vectors


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def test_description_comes_from_the_sentence_transformers_files(minilm: LoadedModel) -> None:
    description = minilm.description
    assert (description.pooling.value, description.normalize_by_default) == ("mean", True)
    assert (description.hidden_size, description.max_input_tokens) == (384, 256)
    assert minilm.fingerprint.startswith("sha256:")


def test_parity_with_sentence_transformers(engine: EmbeddingEngine) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(
        SENTENCES, convert_to_numpy=True
    )
    ours = embed(engine, SENTENCES)
    assert ours.shape == reference.shape == (len(SENTENCES), 384)
    assert cosine(ours, reference).min() >= 0.9999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("anchor", "paraphrase", "unrelated"),
    [
        (
            "A man is playing a guitar.",
            "Someone plays the guitar.",
            "The stock market fell sharply.",
        ),
        (
            "How do I reset my password?",
            "I forgot my password, how can I change it?",
            "The recipe needs two cups of flour.",
        ),
        ("Der Hund spielt im Garten.", "Im Garten spielt der Hund.", "Die Börse schloss im Minus."),
        ("El gato duerme en el sofá.", "En el sofá duerme el gato.", "El tren sale a las ocho."),
        (
            "Le chat dort sur le canapé.",
            "Sur le canapé, le chat dort.",
            "Le train part à huit heures.",
        ),
    ],
)
def test_paraphrases_score_higher_than_unrelated_pairs(
    engine: EmbeddingEngine, anchor: str, paraphrase: str, unrelated: str
) -> None:
    a, p, u = embed(engine, [anchor, paraphrase, unrelated])
    assert float(a @ p) > float(a @ u) + 0.1


def test_matryoshka_every_dimension_is_the_renormalised_prefix(engine: EmbeddingEngine) -> None:
    full = embed(engine, SENTENCES[:3], normalize=False)
    for dims in range(32, 385):
        truncated = embed(engine, SENTENCES[:3], dimensions=dims)
        assert truncated.shape == (3, dims)
        expected = full[:, :dims] / np.linalg.norm(full[:, :dims], axis=1, keepdims=True)
        assert np.allclose(truncated, expected, atol=1e-6)
        assert np.allclose(np.linalg.norm(truncated, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("dims", [0, 31, 385])
def test_dimensions_outside_32_to_hidden_is_a_validation_error(
    engine: EmbeddingEngine, dims: int
) -> None:
    with pytest.raises(InvalidInputError, match="between 32 and 384") as raised:
        embed(engine, ["hello"], dimensions=dims)
    assert raised.value.param == "dimensions"


def test_200_concurrent_requests_each_get_their_own_vectors(engine: EmbeddingEngine) -> None:
    texts = [
        f"request {i}: " + " ".join(f"w{(i * j) % 97}" for j in range(1 + i % 40))
        for i in range(200)
    ]
    solo = embed(engine, texts)  # one request, many inputs; each row checked against alone below
    singles = np.stack([embed(engine, [t])[0] for t in texts[:20]])
    assert cosine(singles, solo[:20]).min() >= 0.99999

    async def concurrently() -> list[np.ndarray]:
        results = await asyncio.gather(*(engine.embed([t], EmbedOptions()) for t in texts))
        return [r.vectors[0] for r in results]

    together = np.stack(asyncio.run(concurrently()))
    assert together.shape == (200, 384)
    similarity = cosine(together, solo)
    assert similarity.min() >= 0.99999
    # Not just similar: each row is closest to its own text, so nothing was swapped.
    assert (cosine(together[:, None, :], solo[None, :, :]).argmax(axis=1) == np.arange(200)).all()


def test_cancelled_request_is_dropped_and_the_engine_keeps_serving(engine: EmbeddingEngine) -> None:
    async def scenario() -> np.ndarray:
        bulk = asyncio.ensure_future(engine.embed(SENTENCES * 40, EmbedOptions()))
        await asyncio.sleep(0.05)
        bulk.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bulk
        return (await engine.embed(["still serving"], EmbedOptions())).vectors

    assert asyncio.run(scenario()).shape == (1, 384)
    assert engine.queue_depth == (0, 0)


class ExplodingRunner:
    """Wraps the real runner and fails any batch containing a poisoned token sequence."""

    def __init__(self, inner: Any, poison: int) -> None:
        self.inner, self.poison = inner, poison
        self.hidden_size, self.pooling = inner.hidden_size, inner.pooling
        self.device, self.dtype = inner.device, inner.dtype

    def prepare(self) -> None:
        self.inner.prepare()

    def embed(self, sequences: Any) -> torch.Tensor:
        if any(self.poison in s for s in sequences):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.inner.embed(sequences)  # type: ignore[no-any-return]


def test_a_failing_batch_fails_only_its_own_requests(minilm: LoadedModel) -> None:
    poison = minilm.encoder.encode(["zebra"], EmbedOptions())[0][1]
    engine = EmbeddingEngine(ExplodingRunner(minilm.runner, poison), minilm.encoder)
    engine.start()
    try:
        with pytest.raises(BatchFailedError, match="RuntimeError"):
            embed(engine, ["zebra crossing"])
        assert embed(engine, ["a healthy request"]).shape == (1, 384)
    finally:
        engine.stop()


def test_full_queue_answers_overloaded(minilm: LoadedModel) -> None:
    engine = make_engine(minilm, max_queue_tokens=64, max_batch_tokens=64)

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            *(engine.embed(SENTENCES, EmbedOptions()) for _ in range(6)), return_exceptions=True
        )

    try:
        outcomes = asyncio.run(scenario())
    finally:
        engine.stop()
    assert any(isinstance(o, EngineOverloadedError) for o in outcomes)
    assert any(not isinstance(o, BaseException) for o in outcomes)


def test_warm_up_runs_on_the_compute_thread_before_start_returns(minilm: LoadedModel) -> None:
    """What the runner prepares per thread (cuDNN's attention plans) must be the compute
    thread's: the warm-up runs there, and start returns only once it has."""
    warmed: list[threading.Thread] = []
    answered: list[threading.Thread] = []
    done = threading.Event()

    def warm_up() -> None:
        minilm.runner.prepare()
        minilm.runner.embed(minilm.encoder.encode(["warm up"], EmbedOptions()))
        warmed.append(threading.current_thread())

    def on_done(result: object, error: Exception | None) -> None:
        answered.append(threading.current_thread())
        done.set()

    engine = EmbeddingEngine(minilm.runner, minilm.encoder)
    engine.start(warm_up=warm_up)
    try:
        assert len(warmed) == 1  # before start returned
        engine.submit(minilm.encoder.encode(["a question"], EmbedOptions()), EmbedOptions(),
                      on_done=on_done)  # fmt: skip
        assert done.wait(30)
        assert answered == warmed
        assert warmed[0] is not threading.current_thread()
    finally:
        engine.stop()


def test_a_failing_warm_up_fails_start_and_leaves_the_engine_stopped(
    minilm: LoadedModel,
) -> None:
    def warm_up() -> None:
        raise RuntimeError("CUDA out of memory while capturing graphs")

    engine = EmbeddingEngine(minilm.runner, minilm.encoder)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.start(warm_up=warm_up)
    try:
        assert not engine.running
        with pytest.raises(EngineUnavailableError):
            engine.submit([[101, 102]], EmbedOptions(), on_done=lambda result, error: None)
    finally:
        engine.stop()
