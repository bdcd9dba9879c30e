"""The embeddings response body, in pieces the event loop can interleave with other work.

orjson writes float32 rows straight from the array (shortest float32 repr), where the standard
library would format each float in Python. Even so, one body of 2,048 vectors of 2,560 floats
takes 144 ms to write on a 2-core machine (56 MB of JSON), and every other request on the loop
would wait that long. So a large body is written in chunks of about `FLOATS_PER_CHUNK` values
(a millisecond or two each), and the route streams them with a yield to the loop between
chunks. A small body is one piece, sent with a Content-Length."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

FLOATS_PER_CHUNK = 1 << 16


def is_large(vectors: npt.NDArray[np.float32]) -> bool:
    return int(vectors.size) > FLOATS_PER_CHUNK


def embedding_chunks(
    vectors: npt.NDArray[np.float32], total_tokens: int, model: str, encoding: str
) -> Iterator[bytes]:
    """The OpenAI embeddings response as consecutive pieces of one JSON document."""
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    yield b'{"object":"list","data":['
    per_chunk = max(1, FLOATS_PER_CHUNK // max(1, rows.shape[1]))
    for start in range(0, len(rows), per_chunk):
        items = [
            _item(index, row, encoding)
            for index, row in enumerate(rows[start : start + per_chunk], start=start)
        ]
        piece = b",".join(orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY) for item in items)
        yield piece if start == 0 else b"," + piece
    usage = {"prompt_tokens": total_tokens, "total_tokens": total_tokens}
    yield b"]," + orjson.dumps({"model": model, "usage": usage})[1:]


def embedding_body(
    vectors: npt.NDArray[np.float32], total_tokens: int, model: str, encoding: str
) -> bytes:
    return b"".join(embedding_chunks(vectors, total_tokens, model, encoding))


def _item(index: int, row: npt.NDArray[np.float32], encoding: str) -> dict[str, Any]:
    embedding: Any = base64.b64encode(row.tobytes()).decode() if encoding == "base64" else row
    return {"object": "embedding", "index": index, "embedding": embedding}
