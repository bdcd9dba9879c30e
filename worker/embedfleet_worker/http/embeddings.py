"""`POST /v1/embeddings`, answered straight from the API guard with the body it has read.

The route is the worker's hot path: under 128 concurrent single queries the event loop was the
bottleneck (H200, 4B: its thread at 0.96 of a core), and a profile gave FastAPI's middleware,
routing and body handling about 30% of the loop's time per request. Here the request is parsed
(the standard library's JSON, as FastAPI does) and validated by the same pydantic model, and
failures get the same OpenAI-shaped errors (`errors.response_for`). FastAPI still declares the
route for the OpenAPI schema and serves it through `respond` if it is ever reached."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from embedfleet_worker.engine.client import EngineClient
from embedfleet_worker.engine.errors import EngineUnavailableError, InvalidInputError
from embedfleet_worker.engine.executor import EmbeddingResult
from embedfleet_worker.engine.options import EmbedOptions, with_truncation
from embedfleet_worker.engine.tokenization import Input
from embedfleet_worker.http.api_models import EmbeddingRequest
from embedfleet_worker.http.errors import (
    ApiError,
    ClientDisconnected,
    invalid_body,
    response_for,
    wrong_task,
)
from embedfleet_worker.http.responses import embedding_body, embedding_chunks, is_large
from embedfleet_worker.http.worker_state import WorkerState
from embedfleet_worker.model.files import Task

log = logging.getLogger("embedfleet.worker")

PATH = "/v1/embeddings"


class EmbeddingsEndpoint:
    def __init__(self, state: WorkerState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Answers one request whose whole body the guard has read."""
        try:
            response = await self.respond(parse_request(scope, body), receive)
        except Exception as error:  # the one error-to-status map, as FastAPI's handlers use
            response = response_for(error, scope.get("state", {}).get("request_id"))
        await response(scope, receive, send)

    async def respond(self, body: EmbeddingRequest, receive: Receive) -> Response:
        state = self.state
        engine = engine_of(state)
        if engine.task is not Task.EMBED:
            raise wrong_task(engine.task, PATH)
        inputs = _as_inputs(body.input)
        require_unicode(inputs, model=body.model, instruction=body.instruction)
        name = model_name(state, body.model)
        require_input_limit(state, len(inputs), "inputs", param="input")
        options = with_truncation(
            EmbedOptions(
                instruction=body.instruction,
                input_type=body.input_type,
                normalize=body.normalize,
                dimensions=body.dimensions,
            ),
            body.truncate,
            body.truncate_prompt_tokens,
            body.truncation_side,
        )
        result = await _until_disconnect(receive, engine.embed(inputs, options))
        state.metrics.inputs.inc(len(inputs))
        state.metrics.input_tokens.inc(result.total_tokens)
        if not is_large(result.vectors):
            return Response(
                embedding_body(result.vectors, result.total_tokens, name, body.encoding_format),
                media_type="application/json",
            )
        chunks = embedding_chunks(result.vectors, result.total_tokens, name, body.encoding_format)
        return StreamingResponse(_yielding(chunks), media_type="application/json")


def parse_request(scope: Scope, body: bytes) -> EmbeddingRequest:
    """The body as FastAPI reads it: JSON when the content type is JSON or absent (an empty
    body is a missing one), then the request model's validation."""
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
    parsed: Any = None
    if content_type is None or _is_json(content_type):
        if body:
            try:
                parsed = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise invalid_body(
                    [{"type": "json_invalid", "loc": ("body",), "ctx": {"error": str(error)}}]
                ) from None
    else:
        parsed = body  # not JSON: refused by the model, as FastAPI refuses it
    try:
        return EmbeddingRequest.model_validate(parsed)
    except ValidationError as error:
        raise invalid_body([dict(e) for e in error.errors()]) from None


def _is_json(content_type: bytes) -> bool:
    kind = content_type.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (
        kind.startswith(b"application/") and kind.endswith(b"+json")
    )


def engine_of(state: WorkerState) -> EngineClient:
    if state.engine is None or not state.ready:
        raise EngineUnavailableError(
            "the model is still loading" if state.load_error is None else "the model failed to load"
        )
    return state.engine


def model_name(state: WorkerState, requested: str | None) -> str:
    if requested is None or requested in state.names:
        return requested or state.names[0]
    raise ApiError(
        404,
        f"the model '{requested}' does not exist; this worker serves {list(state.names)}",
        type_="invalid_request_error",
        code="model_not_found",
        param="model",
    )


def require_input_limit(state: WorkerState, count: int, noun: str, *, param: str) -> None:
    """`--max-inputs-per-request`, for the inputs of a request or the documents of a rerank."""
    limit = state.settings.max_inputs_per_request
    if count > limit:
        raise InvalidInputError(
            f"{count} {noun} exceed the limit of {limit} per request", param=param
        )


def require_unicode(
    inputs: Sequence[Input], inputs_param: str = "input", **fields: str | None
) -> None:
    """JSON `\\udXXX` escapes can put lone surrogates into a parsed string; no tokenizer (nor
    the UTF-8 encoder that writes an error message echoing it) accepts them, so they are refused
    here as a 400 instead of failing later as a 500."""
    for param, value in fields.items():
        if value is not None and not _is_unicode(value):
            raise InvalidInputError(
                f"{param} is not valid Unicode text: it holds a lone surrogate", param=param
            )
    for index, item in enumerate(inputs):
        if isinstance(item, str) and not _is_unicode(item):
            raise InvalidInputError(
                f"{inputs_param} {index} is not valid Unicode text: it holds a lone surrogate",
                param=inputs_param,
            )


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_inputs(raw: str | Sequence[Any]) -> list[Input]:
    if isinstance(raw, str):
        return [raw]
    items = list(raw)
    if items and all(isinstance(item, int) for item in items):
        return [items]  # one tokenised input
    return items


async def _until_disconnect(receive: Receive, work: Awaitable[EmbeddingResult]) -> EmbeddingResult:
    """Awaits the engine, cancelling it (so its inputs are dropped) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()  # the engine drops this request's remaining inputs
        raise ClientDisconnected
    return task.result()


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _yielding(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Each chunk, with a turn for the rest of the event loop before the next."""
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)
