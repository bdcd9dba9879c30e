"""Typed engine errors. The HTTP layer maps each class to one status code (one map, there);
the engine only says what went wrong and which request field it concerns."""

from __future__ import annotations


class EmbeddingError(Exception):
    """Base class: `message` is safe to show to the client."""

    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInputError(EmbeddingError):
    """The request cannot be served as given (HTTP 400)."""

    code = "invalid_input"


class InputTooLongError(InvalidInputError):
    """An input exceeds max_input_tokens and truncation was disabled (HTTP 400)."""

    code = "context_length_exceeded"


class EngineOverloadedError(EmbeddingError):
    """The admission queue is full; retry later (HTTP 429)."""

    code = "queue_full"

    def __init__(self, message: str, *, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class EngineUnavailableError(EmbeddingError):
    """The engine is not started or is shutting down (HTTP 503)."""

    code = "engine_unavailable"


class BatchFailedError(EmbeddingError):
    """The model failed on the batch holding this request; other requests are unaffected."""

    code = "batch_failed"
