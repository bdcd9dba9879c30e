"""The FastAPI application: routes only translate between HTTP and the engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedfleet_worker import __version__
from embedfleet_worker.engine.client import EngineClient
from embedfleet_worker.engine.errors import (
    EmbeddingError,
    EngineUnavailableError,
    InvalidInputError,
)
from embedfleet_worker.engine.executor import EmbeddingResult
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.engine.tokenization import Input
from embedfleet_worker.http.api_models import (
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorBody,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from embedfleet_worker.http.errors import (
    CLIENT_CLOSED_REQUEST,
    ApiError,
    ClientDisconnected,
    error_response,
    from_api_error,
    from_engine_error,
    internal_error,
    validation_message,
)
from embedfleet_worker.http.guard import ApiGuard
from embedfleet_worker.http.loop_monitor import watch_event_loop
from embedfleet_worker.http.responses import embedding_body, embedding_chunks, is_large
from embedfleet_worker.http.worker_state import WorkerState

log = logging.getLogger("embedfleet.worker")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 429, 500, 503)
}


def create_app(state: WorkerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start_loading()
        lag = asyncio.create_task(watch_event_loop(state.metrics.event_loop_lag.observe))
        yield
        lag.cancel()
        await state.stop()

    app = FastAPI(title="embedfleet worker", version=__version__, lifespan=lifespan)
    app.state.worker = state
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.load_error is not None:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "alive"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ready"})
        reason = "draining" if state.draining else "failed" if state.load_error else "loading"
        return JSONResponse({"status": reason}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=state.created) for name in state.names])

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=_ERRORS)
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        engine = _engine(state)
        inputs = _as_inputs(body.input)
        _require_unicode(inputs, model=body.model, instruction=body.instruction)
        name = _model_name(state, body.model)
        if len(inputs) > state.settings.max_inputs_per_request:
            raise InvalidInputError(
                f"{len(inputs)} inputs exceed the limit of "
                f"{state.settings.max_inputs_per_request} per request",
                param="input",
            )
        options = EmbedOptions(
            instruction=body.instruction,
            input_type=body.input_type,
            normalize=body.normalize,
            dimensions=body.dimensions,
            truncate=body.truncate,
        )
        result = await _until_disconnect(request, engine.embed(inputs, options))
        state.metrics.inputs.inc(len(inputs))
        state.metrics.input_tokens.inc(result.total_tokens)
        if not is_large(result.vectors):
            return Response(
                embedding_body(result.vectors, result.total_tokens, name, body.encoding_format),
                media_type="application/json",
            )
        chunks = embedding_chunks(result.vectors, result.total_tokens, name, body.encoding_format)
        return StreamingResponse(_yielding(chunks), media_type="application/json")

    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        engine = _engine(state)
        texts = [body.input] if isinstance(body.input, str) else body.input
        _require_unicode(texts, model=body.model, instruction=body.instruction)
        name = _model_name(state, body.model)
        if not texts:
            raise InvalidInputError("input must not be empty", param="input")
        options = EmbedOptions(
            instruction=body.instruction, input_type=body.input_type, truncate=body.truncate
        )
        tokens = await asyncio.to_thread(engine.encoder.encode, texts, options)
        return TokenizeResponse(tokens=tokens, counts=[len(t) for t in tokens], model=name)

    return ApiGuard(app, state)  # type: ignore[return-value]  # ASGI wrapper, same interface


def _engine(state: WorkerState) -> EngineClient:
    if state.engine is None or not state.ready:
        raise EngineUnavailableError(
            "the model is still loading" if state.load_error is None else "the model failed to load"
        )
    return state.engine


def _model_name(state: WorkerState, requested: str | None) -> str:
    if requested is None or requested in state.names:
        return requested or state.names[0]
    raise ApiError(
        404,
        f"the model '{requested}' does not exist; this worker serves {list(state.names)}",
        type_="invalid_request_error",
        code="model_not_found",
        param="model",
    )


def _require_unicode(inputs: Sequence[Input], **fields: str | None) -> None:
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
                f"input {index} is not valid Unicode text: it holds a lone surrogate",
                param="input",
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


async def _until_disconnect(request: Request, work: Any) -> EmbeddingResult:
    """Awaits the engine, cancelling it (so its inputs are dropped) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()  # the engine drops this request's remaining inputs
        raise ClientDisconnected
    result: EmbeddingResult = task.result()
    return result


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _yielding(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Each chunk, with a turn for the rest of the event loop before the next."""
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EmbeddingError)
    async def engine_error(_: Request, error: EmbeddingError) -> JSONResponse:
        return from_engine_error(error)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return from_api_error(error)

    @app.exception_handler(ClientDisconnected)
    async def client_gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # reaches no one; logged as 499

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(error.errors()))
        return error_response(
            400, message, type_="invalid_request_error", code="invalid_request", param=param
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(
            error.status_code, "invalid_request"
        )
        return error_response(
            error.status_code, str(error.detail), type_="invalid_request_error", code=code
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": _request_id(request)})
        return internal_error()


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None
