"""The one error-to-status map: every failure the API can report becomes an OpenAI-shaped body
`{"error": {"message", "type", "param", "code"}}` with a fixed status code."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi.responses import JSONResponse
from starlette.responses import Response

from embedfleet_worker.engine.errors import (
    BatchFailedError,
    EmbeddingError,
    EngineOverloadedError,
    EngineUnavailableError,
    InputTooLongError,
    InvalidInputError,
)
from embedfleet_worker.model.files import Task

log = logging.getLogger("embedfleet.worker")

CLIENT_CLOSED_REQUEST = 499  # nginx's code for "the client went away before the answer"


class ClientDisconnected(Exception):
    """The client closed its connection before its answer was ready: its work is dropped and
    the request is counted and logged as 499; nothing is sent and nothing is an error."""


class ApiError(Exception):
    """An HTTP-level refusal that is not the engine's (auth, unknown model, body size...)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.param, self.headers = param, headers or {}


# Engine error class -> (status, OpenAI error type). Most specific classes first.
_ENGINE_STATUS: list[tuple[type[EmbeddingError], int, str]] = [
    (InputTooLongError, 400, "invalid_request_error"),
    (InvalidInputError, 400, "invalid_request_error"),
    (EngineOverloadedError, 429, "rate_limit_error"),
    (EngineUnavailableError, 503, "service_unavailable"),
    (BatchFailedError, 500, "server_error"),
]


def error_response(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "error": {"message": message, "type": type_, "param": param, "code": code}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def from_api_error(error: ApiError) -> JSONResponse:
    return error_response(
        error.status,
        error.message,
        type_=error.type,
        code=error.code,
        param=error.param,
        headers=error.headers,
    )


def from_engine_error(error: EmbeddingError) -> JSONResponse:
    for cls, status, type_ in _ENGINE_STATUS:
        if isinstance(error, cls):
            headers = {}
            if isinstance(error, EngineOverloadedError):
                headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_seconds)))
            if isinstance(error, EngineUnavailableError):
                headers["Retry-After"] = "5"
            return error_response(
                status,
                error.message,
                type_=type_,
                code=error.code,
                param=error.param,
                headers=headers,
            )
    return internal_error()


def internal_error() -> JSONResponse:
    # Never a traceback or exception text: those can leak inputs and internals.
    return error_response(
        500,
        "internal error; the request id in the logs has details",
        type_="server_error",
        code="internal_error",
    )


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The first pydantic error as a readable message and the request field it concerns."""
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return f"the body is not valid JSON{': ' + str(detail) if detail else ''}", None
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = location[0] if location else None
    where = ".".join(location) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}", param


def invalid_body(errors: list[dict[str, Any]]) -> ApiError:
    """A request body that is not JSON or does not fit the request model (pydantic's errors)."""
    message, param = validation_message(errors)
    return ApiError(
        400, message, type_="invalid_request_error", code="invalid_request", param=param
    )


def response_for(error: Exception, request_id: str | None) -> Response:
    """The answer to a failed request: the map above, 499 for a client that left (nobody reads
    it; the access line records it), and an opaque 500 for anything unforeseen."""
    if isinstance(error, EmbeddingError):
        return from_engine_error(error)
    if isinstance(error, ApiError):
        return from_api_error(error)
    if isinstance(error, ClientDisconnected):
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    log.error("unhandled error", exc_info=error, extra={"request_id": request_id})
    return internal_error()


def wrong_task(served: Task, path: str) -> ApiError:
    """The 404 for a route the worker's model does not serve."""
    wanted = {"rerank": "a reranker such as Qwen/Qwen3-Reranker-4B", "embed": "an embedding model"}
    needs = wanted[Task.RERANK if served is Task.EMBED else Task.EMBED]
    return ApiError(
        404,
        f"this worker serves task '{served}', not {path}: that needs {needs} "
        "(EmbeddingService spec.model.task, or `serve --task`)",
        type_="invalid_request_error",
        code="not_found",
    )
