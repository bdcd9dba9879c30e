"""`POST /v1/rerank` over real HTTP on loopback, from a real `embedfleet-worker serve` with a
tiny random Qwen3 reranker and the real Qwen3 tokenizer: results best first with the scores
the runner computes, `top_n` and `return_documents`, every refusal OpenAI-shaped (including the
route a worker's task does not serve), and fuzzed bodies never answered with a 500."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.engine.reranking import PairEncoder
from embedfleet_worker.model.loader import ModelSpec, load_encoder, load_model
from tests.modelzoo import make_tiny_qwen3_reranker
from tests.worker.server_process import WorkerProcess, start_worker
from tests.worker.test_server_fuzz import JSON_VALUES, TEXT, assert_error_shape

QUERY = "What is the capital of China?"
DOCUMENTS = [
    "Gravity is a force that attracts two bodies towards each other.",
    "The capital of China is Beijing.",
    "Pandas eat bamboo.",
    "北京是中华人民共和国的首都。",
]


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen3_reranker(tmp_path_factory.mktemp("reranker"))


@pytest.fixture(scope="module")
def worker(reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    folder = tmp_path_factory.mktemp("rerank-worker")
    process = start_worker(
        folder, "--model", str(reranker_dir), "--served-model-name", "rr",
        "--max-inputs-per-request", "8", "--max-input-tokens", "256",
    )  # fmt: skip
    yield process
    assert process.terminate() == 0, process.log()[-3000:]


@pytest.fixture(scope="module")
def client(worker: WorkerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=worker.base_url, timeout=30) as client:
        yield client


def test_results_best_first_with_the_runners_scores(
    client: httpx.Client, reranker_dir: Path
) -> None:
    body = {"model": "rr", "query": QUERY, "documents": DOCUMENTS, "return_documents": True}
    response = client.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    body = response.json()
    spec = ModelSpec(model=str(reranker_dir), device="cpu", max_input_tokens=256)
    sequences = PairEncoder(load_encoder(spec).encoder).encode(QUERY, DOCUMENTS, EmbedOptions())
    truth = load_model(spec, with_encoder=False).runner.embed(sequences)[:, 0].tolist()
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -truth[i])
    print("order:", [(r["index"], round(r["relevance_score"], 4)) for r in body["results"]])
    assert [r["index"] for r in body["results"]] == order
    for result in body["results"]:
        assert math.isclose(result["relevance_score"], truth[result["index"]], abs_tol=1e-5)
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    assert body["model"] == "rr"
    assert body["usage"]["total_tokens"] == sum(len(s) for s in sequences)
    assert body["id"].startswith("rerank-")


def test_top_n_and_no_documents_by_default(client: httpx.Client) -> None:
    full = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()
    top = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert top.status_code == 200
    assert top.json()["results"] == full["results"][:2]
    assert all("document" not in r for r in full["results"])


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"query": QUERY, "documents": []}, "invalid_input", "documents"),
        ({"query": QUERY, "documents": ["a"] * 9}, "invalid_input", "documents"),
        ({"query": "", "documents": ["a"]}, "invalid_input", "query"),
        ({"query": QUERY, "documents": ["a", ""]}, "invalid_input", "documents"),
        ({"query": QUERY, "documents": "a"}, "invalid_request", "documents"),
        ({"query": QUERY, "documents": [1]}, "invalid_request", "documents"),
        ({"documents": ["a"]}, "invalid_request", "query"),
        ({"query": QUERY, "documents": ["a"], "top_n": 0}, "invalid_request", "top_n"),
        ({"query": QUERY, "documents": ["a"], "truncate_prompt_tokens": 5}, "invalid_input",
         "truncate_prompt_tokens"),  # below the prompt's own length
        ({"query": QUERY, "documents": ["a " * 400], "truncate": False},
         "context_length_exceeded", "input"),
        ({"query": QUERY, "documents": ["\ud800"]}, "invalid_input", "documents"),
        ({"query": "\udfff", "documents": ["a"]}, "invalid_input", "query"),
    ],
)  # fmt: skip
def test_refusals(client: httpx.Client, body: dict[str, Any], code: str, param: str) -> None:
    raw = json.dumps(body).encode()  # lone surrogates as \udXXX escapes
    response = client.post("/v1/rerank", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert_error_shape(response)
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, param)


def test_embeddings_from_a_reranker_are_a_clear_404(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"input": "hello"})
    assert response.status_code == 404
    assert_error_shape(response)
    assert "serves task 'rerank'" in response.json()["error"]["message"]


def test_tokenize_on_a_reranker_counts_the_prompts_rerank_scores(client: httpx.Client) -> None:
    """With the query, /tokenize answers the (query, document) prompts: their counts add up to
    the usage /v1/rerank reports, truncation included. Without it, a clear 400."""
    body = {"query": QUERY, "documents": DOCUMENTS, "instruction": "Find the capital",
            "truncate_prompt_tokens": 60, "truncation_side": "left"}  # fmt: skip
    rerank = client.post("/v1/rerank", json=body)
    tokens = client.post("/tokenize", json={**body, "input": body.pop("documents")})
    assert rerank.status_code == tokens.status_code == 200, (rerank.text, tokens.text)
    counts = tokens.json()["counts"]
    assert len(counts) == len(DOCUMENTS)
    assert max(counts) == 60
    assert sum(counts) == rerank.json()["usage"]["prompt_tokens"]
    bare = client.post("/tokenize", json={"input": DOCUMENTS})
    assert bare.status_code == 400
    assert_error_shape(bare)
    assert bare.json()["error"]["param"] == "query"
    assert "this worker reranks" in bare.json()["error"]["message"]


RERANK_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "query": st.one_of(TEXT, JSON_VALUES),
    "documents": st.one_of(st.lists(TEXT, max_size=10), JSON_VALUES),
    "top_n": st.one_of(st.integers(-2, 12), JSON_VALUES),
    "return_documents": st.one_of(st.booleans(), JSON_VALUES),
    "instruction": st.one_of(TEXT, JSON_VALUES),
    "truncate_prompt_tokens": st.one_of(st.integers(-2, 300), JSON_VALUES),
    "truncation_side": st.one_of(st.sampled_from(["left", "right", "up"]), JSON_VALUES),
    "model": st.one_of(st.sampled_from(["rr", "nope"]), JSON_VALUES),
}
GOOD = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
VALID = st.fixed_dictionaries(
    {"query": GOOD, "documents": st.lists(GOOD, min_size=1, max_size=8)},
    optional={"top_n": st.integers(1, 10), "return_documents": st.booleans(),
              "instruction": GOOD, "truncation_side": st.sampled_from(["left", "right"])},
)  # fmt: skip


@st.composite
def rerank_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body = dict(draw(VALID))
    for field in draw(st.lists(st.sampled_from(sorted(RERANK_FIELDS)), max_size=2)):
        body[field] = draw(RERANK_FIELDS[field])
    return body


def answered(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The 200 answer's JSON, or None after checking a refusal's OpenAI shape; never a 500."""
    raw = json.dumps(body).encode()
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in {200, 400, 404}, (response.status_code, response.text[:500])
    if response.status_code != 200:
        assert_error_shape(response)
        return None
    answer: dict[str, Any] = response.json()
    return answer


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=rerank_bodies())
def test_fuzzed_bodies_never_fail_unexpectedly(client: httpx.Client, body: dict[str, Any]) -> None:
    answer = answered(client, "/v1/rerank", body)
    if answer is None:
        return
    results = answer["results"]
    count = len(body["documents"])
    assert len(results) == min(count, body.get("top_n") or count)
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len({r["index"] for r in results}) == len(results)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=rerank_bodies())
def test_fuzzed_tokenize_bodies_never_fail_unexpectedly(
    client: httpx.Client, body: dict[str, Any]
) -> None:
    """The same bodies at /tokenize, the documents as `input`: a prompt per document or a
    clear refusal."""
    body = {("input" if k == "documents" else k): v for k, v in body.items()}
    answer = answered(client, "/tokenize", body)
    if answer is None:
        return
    count = 1 if isinstance(body["input"], str) else len(body["input"])
    assert answer["counts"] == [len(t) for t in answer["tokens"]]
    assert len(answer["counts"]) == count
