"""The worker over real HTTP on loopback, called with the official `openai` client and raw
requests: every input form and option, vectors equal the engine's, every error case's status
and OpenAI-shaped body, auth, probes, metrics and the tokenizer endpoint."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from embedfleet_worker.engine.executor import EmbeddingEngine
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.metrics import WORKER_MODEL_LOAD, WORKER_START
from embedfleet_worker.model.loader import ModelSpec, load_model
from tests.modelzoo import minilm_dir
from tests.worker.server_process import WorkerProcess, start_worker

API_KEY = "sk-test-0123456789"
MODEL = "minilm"
TEXTS = ["The cat sits on the mat.", "A feline rests on a rug.", "Stock markets fell today."]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    folder = tmp_path_factory.mktemp("worker")
    key_file = folder / "api-key"
    key_file.write_text(API_KEY + "\n")
    process = start_worker(
        folder,
        "--model", str(minilm_dir()),
        "--served-model-name", MODEL,
        "--served-model-name", "text-embedding-3-small",
        "--api-key-file", str(key_file),
        "--max-inputs-per-request", "16",
        "--max-request-bytes", "65536",
        "--default-instruction", "Find similar sentences",
    )  # fmt: skip
    yield process
    assert process.terminate() == 0


@pytest.fixture(scope="module")
def client(worker: WorkerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=worker.api_url, api_key=API_KEY, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def engine() -> Iterator[EmbeddingEngine]:
    model = load_model(ModelSpec(model=str(minilm_dir()), device="cpu"))
    engine = EmbeddingEngine(model.runner, model.encoder)
    engine.start()
    yield engine
    engine.stop()


def engine_vectors(engine: EmbeddingEngine, inputs: list[Any], **options: Any) -> np.ndarray:
    return asyncio.run(engine.embed(inputs, EmbedOptions(**options))).vectors


def vectors(response: Any) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def test_strings_lists_and_token_ids_equal_the_engine(
    client: openai.OpenAI, engine: EmbeddingEngine
) -> None:
    expected = engine_vectors(engine, TEXTS)
    batch = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert [item.index for item in batch.data] == [0, 1, 2]
    assert np.allclose(vectors(batch), expected, atol=1e-5)
    assert batch.model == MODEL
    assert batch.usage.prompt_tokens == batch.usage.total_tokens > 0

    single = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert np.allclose(vectors(single)[0], expected[0], atol=1e-5)

    ids = engine.encoder.tokenizer(TEXTS[:2], add_special_tokens=False)["input_ids"]
    one = client.embeddings.create(model=MODEL, input=ids[0], encoding_format="float")
    many = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert np.allclose(vectors(one)[0], expected[0], atol=1e-5)
    assert np.allclose(vectors(many), expected[:2], atol=1e-5)


def test_base64_is_little_endian_float32_as_the_client_decodes_it(
    client: openai.OpenAI, worker: WorkerProcess, engine: EmbeddingEngine
) -> None:
    expected = engine_vectors(engine, TEXTS)
    decoded = client.embeddings.create(model=MODEL, input=TEXTS)  # the client asks for base64
    assert np.allclose(vectors(decoded), expected, atol=1e-5)
    raw = httpx.post(
        worker.api_url + "/embeddings",
        json={"model": MODEL, "input": TEXTS[0], "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ).json()
    blob = base64.b64decode(raw["data"][0]["embedding"])
    assert np.allclose(np.frombuffer(blob, dtype="<f4"), expected[0], atol=1e-5)


def test_dimensions_and_instructions(client: openai.OpenAI, engine: EmbeddingEngine) -> None:
    short = client.embeddings.create(model=MODEL, input=TEXTS, dimensions=64)
    assert vectors(short).shape == (3, 64)
    assert np.allclose(vectors(short), engine_vectors(engine, TEXTS, dimensions=64), atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors(short), axis=1), 1.0, atol=1e-5)

    explicit = client.embeddings.create(
        model=MODEL, input=TEXTS, extra_body={"instruction": "Classify the topic"}
    )
    expected = engine_vectors(engine, TEXTS, instruction="Classify the topic")
    assert np.allclose(vectors(explicit), expected, atol=1e-5)
    default = client.embeddings.create(model=MODEL, input=TEXTS, extra_body={"input_type": "query"})
    expected_default = engine_vectors(engine, TEXTS, instruction="Find similar sentences")
    assert np.allclose(vectors(default), expected_default, atol=1e-5)


def test_alias_names_and_models_endpoint(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL, "text-embedding-3-small"]
    alias = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert alias.model == "text-embedding-3-small"


def post(
    worker: WorkerProcess,
    body: Any,
    *,
    key: str | None = API_KEY,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        return httpx.post(worker.api_url + "/embeddings", content=body, headers=headers, **kwargs)
    return httpx.post(worker.api_url + "/embeddings", json=body, headers=headers, **kwargs)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": MODEL, "input": []}, 400, "invalid_input", "input"),
        ({"model": MODEL, "input": ""}, 400, "invalid_input", "input"),
        ({"model": MODEL, "input": ["ok", ""]}, 400, "invalid_input", "input"),
        ({"model": MODEL, "input": [[]]}, 400, "invalid_input", "input"),
        ({"model": MODEL, "input": 42}, 400, "invalid_request", "input"),
        ({"model": MODEL, "input": ["a", 1]}, 400, "invalid_request", "input"),
        ({"model": MODEL, "input": [1, -5]}, 400, "invalid_request", "input"),
        ({"model": MODEL, "input": [[1, 99999999]]}, 400, "invalid_input", "input"),
        ({"model": MODEL}, 400, "invalid_request", "input"),
        ({"model": MODEL, "input": "x", "dimensions": 31}, 400, "invalid_input", "dimensions"),
        ({"model": MODEL, "input": "x", "dimensions": 385}, 400, "invalid_input", "dimensions"),
        ({"model": MODEL, "input": "x", "dimensions": "64"}, 400, "invalid_request", "dimensions"),
        ({"model": MODEL, "input": ["x"] * 17}, 400, "invalid_input", "input"),
        (
            {"model": MODEL, "input": "word " * 400, "truncate": False},
            400, "context_length_exceeded", "input",
        ),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, 400, "invalid_request",
         "encoding_format"),
        ({"model": MODEL, "input": "x", "instruction": "q", "input_type": "document"}, 400,
         "invalid_input", "instruction"),
        ({"model": "gpt-4", "input": "x"}, 404, "model_not_found", "model"),
        ({"model": MODEL, "input": "x", "truncate_prompt_tokens": 0}, 400, "invalid_input",
         "truncate_prompt_tokens"),
        ({"model": MODEL, "input": "x", "truncate_prompt_tokens": -2}, 400, "invalid_input",
         "truncate_prompt_tokens"),
        ({"model": MODEL, "input": "x", "truncate_prompt_tokens": 2}, 400, "invalid_input",
         "truncate_prompt_tokens"),  # BERT's [CLS] and [SEP] leave no room
        ({"model": MODEL, "input": "x", "truncate_prompt_tokens": 513}, 400, "invalid_input",
         "truncate_prompt_tokens"),
        ({"model": MODEL, "input": "x", "truncate_prompt_tokens": "8"}, 400, "invalid_request",
         "truncate_prompt_tokens"),
        ({"model": MODEL, "input": "x", "truncate_prompt_tokens": 8, "truncate": False}, 400,
         "invalid_input", "truncate_prompt_tokens"),
        ({"model": MODEL, "input": "x", "truncation_side": "middle"}, 400, "invalid_request",
         "truncation_side"),
        (b'{"model": "minilm", "input": ', 400, "invalid_request", None),
        (b"\xff\xfe\x00garbage", 400, "invalid_request", None),
        (b"[1, 2, 3]", 400, "invalid_request", None),
    ],
)  # fmt: skip
def test_error_cases(
    worker: WorkerProcess, body: Any, status: int, code: str, param: str | None
) -> None:
    response = post(worker, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("key", [None, "sk-wrong", API_KEY + "x"])
def test_missing_or_wrong_api_key_is_401(worker: WorkerProcess, key: str | None) -> None:
    response = post(worker, {"model": MODEL, "input": "x"}, key=key)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


def test_openai_client_sees_typed_errors(worker: WorkerProcess) -> None:
    with (
        openai.OpenAI(base_url=worker.api_url, api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.embeddings.create(model=MODEL, input="x")
    with openai.OpenAI(base_url=worker.api_url, api_key=API_KEY, max_retries=0) as good:
        with pytest.raises(openai.NotFoundError) as missing:
            good.embeddings.create(model="nope", input="x")
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as bad_dimensions:
            good.embeddings.create(model=MODEL, input="x", dimensions=4)
        assert bad_dimensions.value.param == "dimensions"


def test_body_too_large_is_413(worker: WorkerProcess) -> None:
    response = post(worker, {"model": MODEL, "input": ["y" * 40000, "z" * 40000]})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        yield b'{"model": "minilm", "input": "'
        for _ in range(100):
            yield b"w" * 1000
        yield b'"}'

    streamed = httpx.post(
        worker.api_url + "/embeddings",
        content=chunks(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413


def test_probes_metrics_and_openapi_need_no_key(worker: WorkerProcess) -> None:
    assert httpx.get(worker.base_url + "/health").json() == {"status": "alive"}
    assert httpx.get(worker.base_url + "/ready").json() == {"status": "ready"}
    metrics = httpx.get(worker.base_url + "/metrics").text
    for name in (
        "embedfleet_requests_total",
        "embedfleet_inputs_total",
        "embedfleet_input_tokens_total",
        "embedfleet_request_duration_seconds",
        "embedfleet_queue_wait_seconds",
        "embedfleet_batch_tokens",
        "embedfleet_batch_size",
        "embedfleet_queue_tokens",
        "embedfleet_queue_requests",
        "embedfleet_engine_busy_seconds_total",
        "embedfleet_model_info",
    ):
        assert name in metrics, name
    # No GPU here: the NVML gauges are absent rather than zero.
    assert "embedfleet_gpu_utilization_ratio" not in metrics
    assert 'embedfleet_model_info{dtype="float32",fingerprint="sha256:' in metrics
    # Its own start, set at Ready: process start to Ready, and the model load inside it.
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line[:1] not in "#")
    started, loaded = float(values[WORKER_START]), float(values[WORKER_MODEL_LOAD])
    assert 0 < loaded < started < 600, (loaded, started)
    schema = httpx.get(worker.base_url + "/openapi.json").json()
    assert "/v1/embeddings" in schema["paths"]


def test_tokenize_shows_exactly_what_the_model_sees(worker: WorkerProcess) -> None:
    response = httpx.post(
        worker.base_url + "/tokenize",
        json={"model": MODEL, "input": ["hello world"]},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 200
    assert response.json()["tokens"] == [[101, 7592, 2088, 102]]
    assert response.json()["counts"] == [4]
    paired = httpx.post(
        worker.base_url + "/tokenize",
        json={"model": MODEL, "input": ["hello world"], "query": "q"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert paired.status_code == 400  # a reranker's field: refused, not ignored
    assert paired.json()["error"]["param"] == "query"


def test_rerank_on_an_embedding_worker_is_a_clear_404(worker: WorkerProcess) -> None:
    response = httpx.post(
        worker.api_url + "/rerank",
        json={"model": MODEL, "query": "q", "documents": ["d"]},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert "serves task 'embed'" in error["message"]
    assert "Qwen3-Reranker" in error["message"]


def tokenize(worker: WorkerProcess, **body: Any) -> list[int]:
    response = httpx.post(
        worker.base_url + "/tokenize",
        json={"model": MODEL, **body},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    return list(response.json()["tokens"][0])


def test_truncation_per_request(
    worker: WorkerProcess, client: openai.OpenAI, engine: EmbeddingEngine
) -> None:
    """A token cap counts the template's tokens; the right side keeps the start, the left
    side the end, and an instruction prompt stays whole; the vectors are those of exactly
    the tokens kept."""
    text = " ".join(f"word{i}" for i in range(60))
    full = tokenize(worker, input=text)
    right = tokenize(worker, input=text, truncate_prompt_tokens=12)
    left = tokenize(worker, input=text, truncate_prompt_tokens=12, truncation_side="left")
    assert right == [*full[:11], full[-1]]
    assert left == [full[0], *full[-11:]]
    query = tokenize(worker, input=text, input_type="query")
    cut = tokenize(worker, input=text, input_type="query", truncate_prompt_tokens=20,
                   truncation_side="left")  # fmt: skip
    prompt = len(tokenize(worker, input="x", input_type="query")) - 3  # [CLS] x [SEP]
    assert cut[: 1 + prompt] == query[: 1 + prompt]  # the instruction kept
    assert cut[1 + prompt :] == query[len(query) - (20 - 1 - prompt) :]  # then the end
    assert tokenize(worker, input=text, truncate_prompt_tokens=-1) == full  # the maximum: 512
    response = client.embeddings.create(
        model=MODEL,
        input=text,
        extra_body={"truncate_prompt_tokens": 12, "truncation_side": "left"},
    )
    assert response.usage.prompt_tokens == 12
    inside = left[1:-1]  # the engine wraps token ids in the template again
    alone = asyncio.run(engine.embed([inside], EmbedOptions())).vectors[0]
    np.testing.assert_allclose(response.data[0].embedding, alone, atol=1e-5)


def test_request_id_is_echoed_and_logged_without_the_body(worker: WorkerProcess) -> None:
    secret = "my private sentence that must not reach the logs"
    response = post(worker, {"model": MODEL, "input": secret}, headers={"X-Request-Id": "rid-42"})
    assert response.headers["x-request-id"] == "rid-42"
    # The access line is written after the response is sent: give it a moment (bounded).
    for _ in range(50):
        log = worker.log()
        access = [e for e in log_entries(log) if e.get("request_id") == "rid-42"]
        if access:
            break
        time.sleep(0.1)
    assert [(e["msg"], e["status"]) for e in access] == [("request", 200)]
    assert secret not in log


def log_entries(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_worker_log_is_json_lines(worker: WorkerProcess) -> None:
    lines = [line for line in worker.log().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert any(entry["msg"] == "model ready" for entry in parsed)


def test_default_model_serves_without_flags(tmp_path: Path) -> None:
    process = start_worker(tmp_path)
    try:
        response = httpx.post(process.api_url + "/embeddings", json={"input": "hi"})
        assert response.status_code == 200
        assert response.json()["model"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert len(response.json()["data"][0]["embedding"]) == 384
    finally:
        assert process.terminate() == 0
