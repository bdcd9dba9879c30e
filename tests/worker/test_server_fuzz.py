"""Property-based fuzzing of the HTTP API of a real `embedfleet-worker serve` process (CPU,
all-MiniLM-L6-v2): whatever the body, the server answers promptly, never with a 500 (nor a
FastAPI-style 422: validation failures are 400s), every error is OpenAI-shaped, and every 200
holds one well-formed embedding per input.

Bodies: arbitrary JSON values; objects with the real field names holding wrong or edge values
(empty, nested, huge or negative numbers, lone UTF-16 surrogates, wrong types); and raw bytes
(invalid UTF-8, truncated JSON, absurd numbers)."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.worker.server_process import WorkerProcess, start_worker

pytestmark = pytest.mark.slow

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
HIDDEN_SIZE = 384
VOCAB_SIZE = 30522  # bert-base-uncased, MiniLM's tokenizer
ALLOWED = {200, 400, 404, 413}
ERROR_KEYS = {"message", "type", "param", "code"}

FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ----------------------------------------------------------------------------- strategies
SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
PLAIN_TEXT = st.text(max_size=40)
TEXT = st.one_of(
    PLAIN_TEXT,
    st.sampled_from(["", " ", "\x00", "\n", "a", "😀", "東京", "[CLS]", "<|endoftext|>"]),
    st.just("long " * 400),  # over the 256-token limit: truncated, or refused with truncate off
    st.builds(lambda a, s, b: a + s + b, PLAIN_TEXT, SURROGATES, PLAIN_TEXT),
)
HUGE_INTS = st.sampled_from([2**31, 2**63, 2**64 + 1, 10**30, -(2**63), -1])
NUMBERS = st.one_of(
    st.integers(),
    HUGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(PLAIN_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
TOKEN_IDS = st.lists(
    st.one_of(
        st.integers(min_value=0, max_value=VOCAB_SIZE - 1),
        st.sampled_from([0, VOCAB_SIZE - 1, VOCAB_SIZE, -1, 2**40]),
    ),
    max_size=12,
)
INPUTS = st.one_of(
    TEXT,
    st.lists(TEXT, max_size=6),
    TOKEN_IDS,
    st.lists(TOKEN_IDS, max_size=4),
    st.sampled_from(
        [
            "",
            [],
            [""],
            [[]],
            [[], []],
            [[[1]]],
            [["a"]],
            ["a", 1],
            [1, "a"],
            [[1], "a"],
            [None],
            [True, False],
            [1.5],
            [0.0],
            {"text": "a"},
            ["a"] * 2049,  # over --max-inputs-per-request
        ]
    ),
    JSON_VALUES,
)
DIMENSIONS = st.one_of(
    st.sampled_from([0, 31, 32, 33, 64, 383, 384, 385, -1, 2**64, 10**30, "32", 32.0, True]),
    st.integers(),
    JSON_VALUES,
)
ENCODING = st.one_of(st.sampled_from(["float", "base64", "FLOAT", "binary", ""]), JSON_VALUES)
FLAGS = st.one_of(st.booleans(), st.sampled_from([0, 1, "true", "false", "", [], {}]), SCALARS)
INPUT_TYPES = st.one_of(st.sampled_from(["query", "document", "Query", "passage", ""]), SCALARS)
MODELS = st.one_of(st.sampled_from([MODEL, "nope", "", MODEL.upper()]), TEXT, JSON_VALUES)

HOSTILE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "input": INPUTS,
    "model": MODELS,
    "dimensions": DIMENSIONS,
    "encoding_format": ENCODING,
    "normalize": FLAGS,
    "truncate": FLAGS,
    "instruction": st.one_of(TEXT, SCALARS),
    "input_type": INPUT_TYPES,
    "user": st.one_of(TEXT, SCALARS),
    "truncate_prompt_tokens": st.one_of(
        st.sampled_from([-2, -1, 0, 1, 2, 3, 256, 257, 2**64, "8", 8.0, True]), JSON_VALUES
    ),
    "truncation_side": st.one_of(st.sampled_from(["left", "right", "LEFT", "middle", ""]), SCALARS),
    "extra_field": JSON_VALUES,
}
# Every field hostile at once (mostly refused by the schema).
REQUEST_OBJECTS = st.fixed_dictionaries(
    {"input": INPUTS}, optional={k: v for k, v in HOSTILE_FIELDS.items() if k != "input"}
)
# Requests the server should serve, so the engine path is fuzzed too.
GOOD_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
VALID_REQUESTS = st.fixed_dictionaries(
    {
        "input": st.one_of(
            GOOD_TEXT,
            st.lists(GOOD_TEXT, min_size=1, max_size=6),
            st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1, max_size=12),
            st.lists(
                st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1, max_size=12),
                min_size=1,
                max_size=4,
            ),
        )
    },
    optional={
        "model": st.just(MODEL),
        "dimensions": st.integers(32, HIDDEN_SIZE),
        "encoding_format": st.sampled_from(["float", "base64"]),
        "normalize": st.booleans(),
        "truncate": st.booleans(),
        "instruction": GOOD_TEXT,
        "input_type": st.just("query"),
        "user": GOOD_TEXT,
        "truncate_prompt_tokens": st.one_of(st.just(-1), st.integers(3, 256)),
        "truncation_side": st.sampled_from(["left", "right"]),
    },
)


@st.composite
def one_bad_field(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with exactly one field replaced by a hostile value."""
    request = dict(draw(VALID_REQUESTS))
    field = draw(st.sampled_from(sorted(HOSTILE_FIELDS)))
    request[field] = draw(HOSTILE_FIELDS[field])
    return request


# Instruction plus input_type "document": a refusal the engine makes, not the schema.
DOCUMENT_WITH_INSTRUCTION = st.fixed_dictionaries(
    {
        "input": st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3)),
        "instruction": TEXT,
        "input_type": st.just("document"),
    }
)
OBJECT_WITHOUT_INPUT = st.dictionaries(PLAIN_TEXT.filter(lambda k: k != "input"), JSON_VALUES)


def encode_json(value: Any) -> bytes:
    # ensure_ascii escapes lone surrogates as \udXXX; NaN and Infinity go out as Python writes.
    return json.dumps(value).encode()


RAW_BODIES = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda b: b'{"input": "' + b + b'"}', st.binary(min_size=1, max_size=16)),
    st.sampled_from(
        [
            b"",
            b"{",
            b'{"input": "a"',
            b'{"input": ["a", ',
            b'{"input": "\xff\xfe"}',
            b'{"input": "\xc3\x28"}',
            b'{"input": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8: invalid
            b"\xef\xbb\xbf" + b'{"input": "a"}',  # UTF-8 byte-order mark
            '{"input": "a"}'.encode("utf-16"),
            b'{"input": [' + b"9" * 5000 + b"]}",  # over Python's int-parsing digit limit
            b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # deeper than the JSON parser
            b'{"input": "a", "dimensions": 1e999}',
            b'{"input": "a", "dimensions": NaN}',
            b'{"input": "a", "input": ["b", "c"]}',  # duplicate key: the last one wins
            b"[]",
            b"null",
            b'"input"',
        ]
    ),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """One request body: JSON objects with the API's fields most of the time."""
    kind = draw(
        st.sampled_from(
            ["valid"] * 3
            + ["one bad field"] * 4
            + ["hostile"] * 2
            + ["document", "object", "json", "raw", "cut"]
        )
    )
    if kind == "valid":
        return encode_json(draw(VALID_REQUESTS))
    if kind == "one bad field":
        return encode_json(draw(one_bad_field()))
    if kind == "hostile":
        return encode_json(draw(REQUEST_OBJECTS))
    if kind == "document":
        return encode_json(draw(DOCUMENT_WITH_INSTRUCTION))
    if kind == "object":
        return encode_json(draw(OBJECT_WITHOUT_INPUT))
    if kind == "json":
        return encode_json(draw(JSON_VALUES))
    if kind == "raw":
        return draw(RAW_BODIES)
    whole = encode_json(draw(REQUEST_OBJECTS))
    return whole[: draw(st.integers(min_value=0, max_value=max(0, len(whole) - 1)))]


# ----------------------------------------------------------------------------- checks
def expected_count(request: Any) -> int:
    """How many embeddings a 200 must hold: the server accepted `request` as it parsed it."""
    assert isinstance(request, dict), request
    raw = request["input"]
    if isinstance(raw, str):
        return 1
    assert isinstance(raw, list), raw
    if raw and all(isinstance(item, int) for item in raw):
        return 1  # one input given as token ids
    return len(raw)


def assert_error_shape(response: httpx.Response) -> None:
    assert response.headers.get("content-type") == "application/json", response.text[:500]
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert set(error) == ERROR_KEYS, body
    assert isinstance(error["message"], str), body
    assert error["message"], body
    assert isinstance(error["type"], str), body
    assert error["param"] is None or isinstance(error["param"], str), body
    assert error["code"] is None or isinstance(error["code"], str), body


def assert_embeddings(response: httpx.Response, sent: bytes) -> None:
    request = json.loads(sent)  # parsed exactly as the server parses it
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == MODEL
    data = body["data"]
    assert len(data) == expected_count(request)
    assert [item["index"] for item in data] == list(range(len(data)))
    dimensions = request.get("dimensions") or HIDDEN_SIZE
    for item in data:
        assert item["object"] == "embedding"
        embedding = item["embedding"]
        if request.get("encoding_format") == "base64":
            assert isinstance(embedding, str)
            assert len(base64.b64decode(embedding, validate=True)) == 4 * dimensions
        else:
            assert isinstance(embedding, list)
            assert len(embedding) == dimensions
            assert all(isinstance(x, float) and math.isfinite(x) for x in embedding)
            if request.get("normalize") is not False:
                assert math.isclose(math.hypot(*embedding), 1.0, abs_tol=1e-3)
    usage = body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] >= len(data)


def post(client: httpx.Client, path: str, raw: bytes) -> httpx.Response:
    try:
        return client.post(path, content=raw, headers={"Content-Type": "application/json"})
    except httpx.TransportError as error:
        pytest.fail(f"no answer to {raw[:200]!r}: {type(error).__name__}: {error}")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = start_worker(tmp_path_factory.mktemp("fuzz-worker"))
    try:
        yield worker
    finally:
        assert worker.terminate() == 0, worker.log()[-3000:]


@pytest.fixture(scope="module")
def client(worker: WorkerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=worker.base_url, timeout=10) as client:
        yield client


# ----------------------------------------------------------------------------- properties
@FUZZ_SETTINGS
@given(raw=bodies())
def test_embeddings_never_fail_unexpectedly(client: httpx.Client, raw: bytes) -> None:
    response = post(client, "/v1/embeddings", raw)
    event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code in ALLOWED, (response.status_code, response.text[:500])
    if response.status_code == 200:
        assert_embeddings(response, raw)
    else:
        assert_error_shape(response)


TOKENIZE_OBJECTS = st.fixed_dictionaries(
    {"input": st.one_of(TEXT, st.lists(TEXT, max_size=4), JSON_VALUES)},
    optional={
        "model": MODELS,
        "query": st.one_of(TEXT, SCALARS),  # a reranker's field: refused here
        "instruction": st.one_of(TEXT, SCALARS),
        "input_type": INPUT_TYPES,
        "truncate": FLAGS,
    },
)


@settings(FUZZ_SETTINGS, max_examples=100)
@given(raw=st.one_of(TOKENIZE_OBJECTS.map(encode_json), RAW_BODIES))
def test_tokenize_never_fails_unexpectedly(client: httpx.Client, raw: bytes) -> None:
    response = post(client, "/tokenize", raw)
    event(f"status {response.status_code}")
    assert response.status_code in ALLOWED, (response.status_code, response.text[:500])
    if response.status_code != 200:
        assert_error_shape(response)
        return
    request = json.loads(raw)
    body = response.json()
    count = 1 if isinstance(request["input"], str) else len(request["input"])
    assert len(body["tokens"]) == len(body["counts"]) == count
    assert body["counts"] == [len(tokens) for tokens in body["tokens"]]
    assert all(0 <= token < VOCAB_SIZE for tokens in body["tokens"] for token in tokens)


def test_worker_logged_no_unhandled_error(worker: WorkerProcess, client: httpx.Client) -> None:
    """Runs after the properties (file order): nothing reached the catch-all error handler."""
    assert client.get("/ready").status_code == 200
    log = worker.log()
    assert "unhandled error" not in log
    assert "Exception in ASGI application" not in log
