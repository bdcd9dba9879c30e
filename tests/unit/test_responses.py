"""The embeddings body written in chunks is the same JSON document as written at once."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from embedfleet_worker.http.responses import (
    FLOATS_PER_CHUNK,
    embedding_body,
    embedding_chunks,
    is_large,
)


@pytest.mark.parametrize(
    ("rows", "dims"),
    [
        (1, 8),
        (3, 2560),
        (FLOATS_PER_CHUNK // 384, 384),
        (FLOATS_PER_CHUNK // 384 + 1, 384),
        (700, 384),
        (40, 2560),
    ],
)
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_chunks_make_the_openai_document(rows: int, dims: int, encoding: str) -> None:
    vectors = np.random.default_rng(rows).standard_normal((rows, dims)).astype(np.float32)
    chunks = list(embedding_chunks(vectors, 1234, "m", encoding))
    assert len(chunks) > 3 if is_large(vectors) else True
    document = json.loads(b"".join(chunks))  # the standard library: a strict second opinion
    assert document["object"] == "list"
    assert document["model"] == "m"
    assert document["usage"] == {"prompt_tokens": 1234, "total_tokens": 1234}
    assert [item["index"] for item in document["data"]] == list(range(rows))
    for item, row in zip(document["data"], vectors, strict=True):
        assert item["object"] == "embedding"
        if encoding == "base64":
            got = np.frombuffer(base64.b64decode(item["embedding"]), "<f4")
        else:
            got = np.asarray(item["embedding"], dtype=np.float32)
        assert np.array_equal(got, row)  # float32 exactly, either encoding
    assert embedding_body(vectors, 1234, "m", encoding) == b"".join(chunks)


def test_only_bodies_over_the_chunk_size_are_large() -> None:
    assert not is_large(np.zeros((FLOATS_PER_CHUNK // 64, 64), np.float32))
    assert is_large(np.zeros((FLOATS_PER_CHUNK // 64 + 1, 64), np.float32))
