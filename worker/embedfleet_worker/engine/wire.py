"""What the HTTP process and the engine process say to each other over their socket pair, and
how: length-prefixed pickles (protocol 5, so vectors travel as raw float32 bytes), each frame a
list of messages (a sender coalesces what is waiting: fewer wake-ups on the other side).

HTTP process to engine:   ("embed", id, sequences, options)  ("cancel", id)  ("stop",)
                          ("prepare",)   (Ready: prepare the runner between batches now)
Engine to HTTP process:   ("ready", EngineInfo)  ("failed", message)
                          ("result", id, EmbeddingResult)  ("error", id, WireError)
                          ("observe", hook, args)   (the EngineObserver hooks, for metrics)

Both ends are ours and started together, so pickle's trust model holds: nothing else can
write to the socket pair."""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from dataclasses import dataclass
from typing import Any

from embedfleet_worker.engine import errors

_LENGTH = struct.Struct("!I")
OBSERVER_HOOKS = frozenset({"on_batch", "on_queue_wait", "on_queue_depth"})


@dataclass(frozen=True)
class EngineInfo:
    """What the HTTP process learns about the model once the engine has loaded it."""

    hidden_size: int
    fingerprint: str
    dtype_name: str
    device: str
    load_seconds: float


@dataclass(frozen=True)
class WireError:
    """An engine error, by class name: exceptions with keyword fields do not pickle faithfully."""

    kind: str
    message: str
    param: str | None = None
    retry_after_seconds: float | None = None

    @classmethod
    def of(cls, error: Exception) -> WireError:
        if isinstance(error, errors.EngineOverloadedError):
            return cls(type(error).__name__, error.message, None, error.retry_after_seconds)
        if isinstance(error, errors.EmbeddingError):
            return cls(type(error).__name__, error.message, error.param)
        return cls("BatchFailedError", f"the engine failed: {type(error).__name__}")

    def exception(self) -> errors.EmbeddingError:
        if self.kind == "EngineOverloadedError":
            return errors.EngineOverloadedError(
                self.message, retry_after_seconds=self.retry_after_seconds or 1.0
            )
        kind = getattr(errors, self.kind, None)
        if not (isinstance(kind, type) and issubclass(kind, errors.EmbeddingError)):
            kind = errors.BatchFailedError
        return kind(self.message, param=self.param)


Message = tuple[Any, ...]


def frame(messages: list[Message]) -> bytes:
    body = pickle.dumps(messages, protocol=5)
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> list[Message] | None:
    """The next frame's messages, or None once the other end has closed."""
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    messages: list[Message] = pickle.loads(body)
    return messages


def receive_frame(sock: socket.socket) -> list[Message] | None:
    """Blocking form of `read_frame`, for the engine process."""
    head = _receive_exactly(sock, _LENGTH.size)
    if head is None:
        return None
    body = _receive_exactly(sock, _LENGTH.unpack(head)[0])
    if body is None:
        return None
    messages: list[Message] = pickle.loads(body)
    return messages


def _receive_exactly(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        try:
            n = sock.recv_into(view[got:])
        except ConnectionError:
            return None
        if n == 0:
            return None
        got += n
    return bytes(buffer)
