"""A large answer is written in pieces with the event loop free between them, and decodes to
exactly what the same inputs give in small requests."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import openai

from tests.worker.server_process import start_worker

MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # the default model


def test_a_large_answer_is_streamed_in_pieces_and_decodes_the_same(tmp_path: Path) -> None:
    worker = start_worker(tmp_path)
    try:
        client = openai.OpenAI(base_url=worker.api_url, api_key="unused", max_retries=0)
        # 400 MiniLM vectors are 153,600 floats: over the chunk size (http/responses.py).
        texts = [f"sentence {i} about rivers, mountains and engines" for i in range(400)]
        small = np.concatenate(
            [
                [d.embedding for d in client.embeddings.create(
                    model=MODEL, input=texts[i : i + 16], encoding_format="float"
                ).data]
                for i in range(0, 400, 16)
            ]
        ).astype(np.float32)  # fmt: skip
        # The client's default (base64, decoded by the client) and explicit float.
        for answer in (
            client.embeddings.create(model=MODEL, input=texts),
            client.embeddings.create(model=MODEL, input=texts, encoding_format="float"),
        ):
            assert [item.index for item in answer.data] == list(range(400))
            got = np.array([item.embedding for item in answer.data], dtype=np.float32)
            assert np.allclose(got, small, atol=1e-5)
            assert answer.usage.prompt_tokens > 400
        raw = httpx.post(worker.api_url + "/embeddings", json={"input": texts}, timeout=60)
        assert raw.headers.get("transfer-encoding") == "chunked"
        assert len(raw.json()["data"]) == 400
        one = httpx.post(worker.api_url + "/embeddings", json={"input": texts[:3]})
        assert "content-length" in one.headers  # a small answer: one piece
    finally:
        assert worker.terminate() == 0
