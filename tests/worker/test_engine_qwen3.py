"""The engine on a tiny random Qwen3 with the real Qwen3 tokenizer, loaded through the same
path as a real checkpoint: vectors equal the transformers reference fed the official format
(instruction prompt + text + one <|endoftext|>), MRL, fingerprint, fairness under bulk load."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from embedfleet_worker.engine.executor import EmbeddingEngine, EngineConfig
from embedfleet_worker.engine.options import EmbedOptions, InputType
from embedfleet_worker.model.files import fingerprint, resolve_model_dir
from embedfleet_worker.model.loader import LoadedModel, ModelSpec, load_model
from embedfleet_worker.model.runners.qwen3 import Qwen3Runner

INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
TEXTS = [
    "What is the capital of China?",
    "Explain gravity",
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. " * 12,
    "量子计算机使用量子比特。",
    "Ein kurzer deutscher Satz.",
]


@pytest.fixture(scope="module")
def qwen3(tiny_qwen3_dir: Path) -> LoadedModel:
    return load_model(
        ModelSpec(model=str(tiny_qwen3_dir), device="cpu", default_instruction=INSTRUCTION)
    )


@pytest.fixture(scope="module")
def engine(qwen3: LoadedModel) -> Any:
    engine = EmbeddingEngine(qwen3.runner, qwen3.encoder, EngineConfig(max_batch_tokens=512))
    engine.start()
    yield engine
    engine.stop()


def reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The official Qwen3-Embedding recipe in plain transformers: left padding, EOS appended,
    last-token pooling, L2 normalisation."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [151643] for t in texts]
    width = max(map(len, ids))
    batch = torch.tensor([[151643] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    with torch.inference_mode():
        hidden = model(input_ids=batch, attention_mask=mask).last_hidden_state[:, -1]
    return torch.nn.functional.normalize(hidden.float(), dim=-1).numpy()


def embed(engine: EmbeddingEngine, inputs: list[Any], **options: Any) -> np.ndarray:
    return asyncio.run(engine.embed(inputs, EmbedOptions(**options))).vectors


def test_loader_picks_the_packed_qwen3_runner(qwen3: LoadedModel) -> None:
    assert isinstance(qwen3.runner, Qwen3Runner)
    assert qwen3.description.pooling.value == "lasttoken"
    assert qwen3.encoder.max_input_tokens == 32768


def test_documents_and_queries_match_the_official_recipe(
    engine: EmbeddingEngine, tiny_qwen3_dir: Path
) -> None:
    documents = embed(engine, TEXTS, input_type=InputType.DOCUMENT)
    queries = embed(engine, TEXTS, input_type=InputType.QUERY)
    expected_documents = reference(tiny_qwen3_dir, TEXTS)
    expected_queries = reference(
        tiny_qwen3_dir, [f"Instruct: {INSTRUCTION}\nQuery:{t}" for t in TEXTS]
    )
    assert np.min((documents * expected_documents).sum(1)) >= 0.99999
    assert np.min((queries * expected_queries).sum(1)) >= 0.99999
    # The instruction really changes the vector (it is not silently dropped).
    assert np.max((documents * queries).sum(1)) < 0.9999


def test_token_id_inputs_equal_their_text(engine: EmbeddingEngine, qwen3: LoadedModel) -> None:
    ids = qwen3.encoder.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    from_text, from_ids, with_eos = embed(engine, [TEXTS[0], ids, [*ids, 151643]])
    assert np.allclose(from_text, from_ids, atol=1e-6)
    assert np.allclose(from_ids, with_eos, atol=1e-6)


def test_truncated_input_keeps_the_eos(tiny_qwen3_dir: Path) -> None:
    short = load_model(ModelSpec(model=str(tiny_qwen3_dir), device="cpu", max_input_tokens=8))
    ids = short.encoder.tokenizer("one two three four five six seven eight nine ten")["input_ids"]
    engine = EmbeddingEngine(short.runner, short.encoder)
    engine.start()
    try:
        [vector] = embed(engine, ["one two three four five six seven eight nine ten"])
    finally:
        engine.stop()
    expected = reference(tiny_qwen3_dir, [short.encoder.tokenizer.decode(ids[:7])])[0]
    assert float(vector @ expected) >= 0.99999


def test_matryoshka_on_qwen3(engine: EmbeddingEngine, qwen3: LoadedModel) -> None:
    full = embed(engine, TEXTS[:2], normalize=False)

    async def all_dimensions() -> list[np.ndarray]:
        results = await asyncio.gather(
            *(engine.embed(TEXTS[:2], EmbedOptions(dimensions=d)) for d in range(32, 65))
        )
        return [r.vectors for r in results]

    for dims, vectors in zip(range(32, 65), asyncio.run(all_dimensions()), strict=True):
        prefix = full[:, :dims] / np.linalg.norm(full[:, :dims], axis=1, keepdims=True)
        assert np.allclose(vectors, prefix, atol=1e-6)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_fingerprint_identifies_the_exact_weights(tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_qwen3_dir, tmp_path / "copy"))
    assert fingerprint(copy) == fingerprint(tiny_qwen3_dir)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the last tensor
    weights.write_bytes(bytes(data))
    assert fingerprint(copy) != fingerprint(tiny_qwen3_dir)


def test_single_queries_are_not_starved_by_a_bulk_request(qwen3: LoadedModel) -> None:
    engine = EmbeddingEngine(
        qwen3.runner,
        qwen3.encoder,
        EngineConfig(max_batch_tokens=4096, interactive_tokens=64, interactive_batch_tokens=256),
    )
    engine.start()
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
    passages = [" ".join(rng.choice(words, size=int(rng.integers(40, 120)))) for _ in range(2000)]
    queries = [f"query {i} about {words[i % 8]}" for i in range(30)]

    async def latency(query: str) -> float:
        started = time.perf_counter()
        await engine.embed([query], EmbedOptions())
        return time.perf_counter() - started

    async def solo() -> list[float]:
        return [await latency(q) for q in queries]

    async def under_bulk() -> tuple[list[float], bool]:
        started = time.perf_counter()
        bulk = asyncio.ensure_future(engine.embed(passages, EmbedOptions()))
        bulk.add_done_callback(lambda _: bulk_seconds.append(time.perf_counter() - started))
        await asyncio.sleep(0.1)
        measured = []
        for query in queries:
            measured.append(await latency(query))
            await asyncio.sleep(0.01)
        bulk_running = not bulk.done()
        result = await bulk
        assert result.vectors.shape == (2000, 64)
        return measured, bulk_running

    bulk_seconds: list[float] = []
    try:
        solo_latencies = asyncio.run(solo())
        mixed_latencies, bulk_was_running = asyncio.run(under_bulk())
    finally:
        engine.stop()
    assert bulk_was_running, "the bulk request finished too early to test anything"
    # The queries ran between the layers of bulk batches, not only between batches.
    assert engine.interleaved_batches > 0
    solo_p99 = float(np.percentile(solo_latencies, 99))
    mixed_p99 = float(np.percentile(mixed_latencies, 99))
    print(
        f"query p99 solo {solo_p99 * 1e3:.1f} ms, under bulk {mixed_p99 * 1e3:.1f} ms; "
        f"bulk request {bulk_seconds[0]:.2f} s"
    )
    # Queued behind the bulk request, a query would wait for most of it; interleaved, it
    # waits for at most about one batch. (A fairness check, not a performance claim: the
    # figures come from bench/engine.py.)
    assert mixed_p99 < bulk_seconds[0] / 4
    assert mixed_p99 <= 30 * solo_p99 + 0.05


def test_hub_id_at_a_pinned_revision_loads_from_the_cache(
    tiny_qwen3_dir: Path, tmp_path: Path
) -> None:
    """The hub code path, offline: a cache laid out as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--embedfleet--tiny-qwen3"
    shutil.copytree(tiny_qwen3_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(commit)
    spec = ModelSpec(
        model="embedfleet/tiny-qwen3", revision="v1", device="cpu", cache_dir=tmp_path, offline=True
    )
    loaded = load_model(spec)
    assert loaded.description.path == repo / "snapshots" / commit
    assert loaded.fingerprint == fingerprint(tiny_qwen3_dir)
    with pytest.raises(Exception, match=r"(?i)revision|cache|snapshot|local"):
        load_model(ModelSpec(**{**spec.__dict__, "revision": "v2"}))


def test_a_model_path_that_is_not_a_folder_is_named_as_such(tmp_path: Path) -> None:
    """What status shows a user who mistyped a path: not the hub client's complaint about
    repo id syntax."""
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=f"^model folder {missing} does not exist$"):
        resolve_model_dir(str(missing), offline=True)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        resolve_model_dir(str(tmp_path / "a-file"), offline=True)
