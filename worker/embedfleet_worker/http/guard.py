"""ASGI middleware in front of the API routes: request id and access log, body size limit,
drain refusal, API key, in-flight accounting, the request counters, and the connection rule
(a response carries `Connection: close` when its connection has lived long enough, or the
worker is draining; see connections.py). Probes (`/health`, `/ready`) and `/metrics` pass
straight through. Routes in `direct` (the hot path) are answered by their handler with the body
read here, without FastAPI's layers."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedfleet_worker.http.errors import CLIENT_CLOSED_REQUEST, ClientDisconnected
from embedfleet_worker.http.worker_state import WorkerState

log = logging.getLogger("embedfleet.access")

API_PREFIXES = ("/v1/", "/tokenize")


class BodyTooLarge(Exception):
    pass


# A route served without FastAPI: (scope, the whole body, receive, send).
DirectHandler = Callable[[Scope, bytes, Receive, Send], Awaitable[None]]


class ApiGuard:
    def __init__(
        self,
        app: ASGIApp,
        state: WorkerState,
        direct: Mapping[tuple[str, str], DirectHandler] | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.direct = dict(direct or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIXES):
            await self.app(scope, receive, send)
            return
        state = self.state
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        peer = scope.get("client")

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                extra = [(b"x-request-id", request_id.encode("latin-1"))]
                if peer is not None and state.connections.closing(
                    tuple(peer), time.monotonic(), draining=state.draining
                ):
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            refusal = self._refusal(headers)
            if refusal is not None:
                await _send_error(send_tracked, *refusal)
                return
            state.in_flight += 1
            try:
                body = await _read_body(receive, state.settings.max_request_bytes)
                handler = self.direct.get((scope["method"], scope["path"]))
                if handler is not None:
                    await handler(scope, body, receive, send_tracked)
                else:
                    await self.app(scope, _replay(body, receive), send_tracked)
            except BodyTooLarge:
                await _send_error(send_tracked, *_too_large(state.settings.max_request_bytes))
            except ClientDisconnected:
                status["code"] = CLIENT_CLOSED_REQUEST  # gone while sending its body
            except asyncio.CancelledError:
                status["code"] = CLIENT_CLOSED_REQUEST  # cancelled with the server
                raise
            finally:
                state.in_flight -= 1
        finally:
            elapsed = time.perf_counter() - started
            state.metrics.requests.labels(code=str(status["code"])).inc()
            state.metrics.sync_connections()  # with --api-processes: this response's recycle
            state.metrics.request_duration.observe(elapsed)
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "client": f"{peer[0]}:{peer[1]}" if peer else None,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status["code"],
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )

    def _refusal(
        self, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        state = self.state
        if state.draining:
            return (
                503,
                _error(
                    "the worker is shutting down; retry on another replica",
                    "service_unavailable",
                    "draining",
                ),
                {"Retry-After": "1"},
            )
        if state.api_key is not None:
            supplied = headers.get("authorization", "")
            scheme, _, token = supplied.partition(" ")
            valid = scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode(), state.api_key.encode()
            )
            if not valid:
                return (
                    401,
                    _error("missing or invalid API key", "authentication_error", "invalid_api_key"),
                    {"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length")
        limit = state.settings.max_request_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return _too_large(limit)
        return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, refused past `limit` bytes as it streams in (chunked bodies have no
    Content-Length), before any parsing happens."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hands the buffered body to the app once, then passes through (disconnect watching)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _too_large(limit: int) -> tuple[int, dict[str, Any], dict[str, str]]:
    return (
        413,
        _error(
            f"request body larger than {limit} bytes", "invalid_request_error", "request_too_large"
        ),
        {},
    )


def _error(message: str, type_: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


async def _send_error(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str]
) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
