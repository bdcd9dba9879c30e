"""The FastAPI application: routes only translate between HTTP and the engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.lowlevel
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedfleet_worker import __version__
from embedfleet_worker.engine.errors import EmbeddingError, InvalidInputError
from embedfleet_worker.engine.options import EmbedOptions, with_truncation
from embedfleet_worker.http.api_models import (
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorBody,
    ModelCard,
    ModelList,
    RerankRequest,
    RerankResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from embedfleet_worker.http.embeddings import PATH as EMBEDDINGS_PATH
from embedfleet_worker.http.embeddings import (
    EmbeddingsEndpoint,
    engine_of,
    model_name,
    require_unicode,
)
from embedfleet_worker.http.errors import (
    ApiError,
    ClientDisconnected,
    error_response,
    from_api_error,
    invalid_body,
    response_for,
)
from embedfleet_worker.http.guard import ApiGuard
from embedfleet_worker.http.loop_monitor import StallLogger, watch_event_loop
from embedfleet_worker.http.rerank import RERANK_PATH, RerankEndpoint
from embedfleet_worker.http.worker_state import WorkerState
from embedfleet_worker.metrics import MULTIPROCESS_DIR
from embedfleet_worker.model.files import Task

log = logging.getLogger("embedfleet.worker")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 429, 500, 503)
}


def create_app(state: WorkerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = state.start_loading()
        if state.engine_socket is not None:
            # A further API process takes connections only once it can answer them; the
            # main one answers /health while a large model loads.
            await asyncio.shield(loading)
            if state.load_error is not None:  # exits; the main process then exits 1
                raise RuntimeError(f"API process could not start: {state.load_error}")
        # Loads anyio's asyncio backend now: Starlette reaches it on a few paths, and its first
        # import, on the event loop mid-load, stalled every request 23 ms on the H200.
        await anyio.lowlevel.checkpoint()
        lag = asyncio.create_task(watch_event_loop(state.metrics.event_loop_lag.observe))
        stall_ms = state.settings.log_event_loop_stalls_ms
        stalls = StallLogger(asyncio.get_running_loop(), stall_ms / 1000) if stall_ms else None
        if stalls is not None:
            stalls.start()
        # Multiprocess metrics: connection events outside API responses reach the shared files.
        sync = (
            asyncio.create_task(_every(1.0, state.metrics.sync_connections))
            if MULTIPROCESS_DIR
            else None
        )
        yield
        lag.cancel()
        if stalls is not None:
            stalls.stop()
        if sync is not None:
            sync.cancel()
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

    embeddings_endpoint = EmbeddingsEndpoint(state)

    @app.post(EMBEDDINGS_PATH, response_model=EmbeddingResponse, responses=_ERRORS)
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        """Declared for the OpenAPI schema: the guard answers this route itself (embeddings.py)."""
        return await embeddings_endpoint.respond(body, request.receive)

    rerank_endpoint = RerankEndpoint(state)

    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        engine = engine_of(state)
        texts = [body.input] if isinstance(body.input, str) else body.input
        require_unicode(texts, model=body.model, query=body.query, instruction=body.instruction)
        name = model_name(state, body.model)
        if not texts:
            raise InvalidInputError("input must not be empty", param="input")
        if engine.task is Task.RERANK or body.query is not None:
            tokens = await rerank_endpoint.tokenize(engine, body, texts)
        else:
            options = with_truncation(
                EmbedOptions(instruction=body.instruction, input_type=body.input_type),
                body.truncate,
                body.truncate_prompt_tokens,
                body.truncation_side,
            )
            tokens = await asyncio.to_thread(engine.encoder.encode, texts, options)
        return TokenizeResponse(tokens=tokens, counts=[len(t) for t in tokens], model=name)

    @app.post(
        RERANK_PATH, response_model=RerankResponse, response_model_exclude_none=True,
        responses=_ERRORS,
    )  # fmt: skip
    async def rerank(body: RerankRequest) -> RerankResponse:
        return await rerank_endpoint.respond(body)

    direct = {("POST", EMBEDDINGS_PATH): embeddings_endpoint}
    return ApiGuard(app, state, direct)  # type: ignore[return-value]  # ASGI wrapper


async def _every(seconds: float, action: Callable[[], None]) -> None:
    while True:
        action()
        await asyncio.sleep(seconds)


def _install_error_handlers(app: FastAPI) -> None:
    """FastAPI's exceptions, through the same map as the guard-served route."""

    async def mapped(request: Request, error: Exception) -> Response:
        return response_for(error, _request_id(request))

    async def invalid(_: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        return from_api_error(invalid_body(list(error.errors())))

    async def http_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(
            error.status_code, "invalid_request"
        )
        return error_response(
            error.status_code, str(error.detail), type_="invalid_request_error", code=code
        )

    for kind in (EmbeddingError, ApiError, ClientDisconnected, Exception):
        app.add_exception_handler(kind, mapped)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None
