"""The frames between the HTTP process and the engine process, and errors across them."""

from __future__ import annotations

import asyncio
import socket
import threading

import numpy as np
import pytest

from embedfleet_worker.engine import errors, wire
from embedfleet_worker.engine.executor import EmbeddingResult
from embedfleet_worker.engine.options import EmbedOptions


@pytest.mark.parametrize(
    "error",
    [
        errors.InvalidInputError("input 3 is an empty string", param="input"),
        errors.InputTooLongError("input 0 has 9000 tokens", param="input"),
        errors.EngineOverloadedError("the queue holds 99 tokens", retry_after_seconds=2.5),
        errors.EngineUnavailableError("the engine is shutting down"),
        errors.BatchFailedError("the model failed on this batch: RuntimeError"),
    ],
)
def test_an_engine_error_crosses_with_its_class_and_fields(error: errors.EmbeddingError) -> None:
    back = wire.WireError.of(error).exception()
    assert type(back) is type(error)
    assert (back.message, back.param, back.code) == (error.message, error.param, error.code)
    if isinstance(error, errors.EngineOverloadedError):
        assert isinstance(back, errors.EngineOverloadedError)
        assert back.retry_after_seconds == error.retry_after_seconds


def test_an_unexpected_error_crosses_as_a_failed_batch_without_its_text() -> None:
    back = wire.WireError.of(KeyError("secret internals")).exception()
    assert isinstance(back, errors.BatchFailedError)
    assert "secret" not in back.message
    assert "KeyError" in back.message


def test_frames_cross_a_socket_pair_whole_and_in_order() -> None:
    ours, theirs = socket.socketpair()
    vectors = np.arange(3 * 2560, dtype=np.float32).reshape(3, 2560)
    sent = [
        [("embed", 1, [[1, 2, 3]], EmbedOptions(dimensions=64))],
        [("result", 1, EmbeddingResult(vectors, [3, 4, 5])), ("cancel", 2)],
    ]

    async def read_all() -> list[list[wire.Message] | None]:
        reader, writer = await asyncio.open_connection(sock=ours)
        got = [await wire.read_frame(reader) for _ in range(3)]
        writer.close()
        return got

    with theirs:
        for messages in sent:
            theirs.sendall(wire.frame(messages))
    first, second, end = asyncio.run(read_all())
    assert end is None  # the other end closed
    assert first == sent[0]
    assert second is not None
    result = second[0][2]
    assert isinstance(result, EmbeddingResult)
    assert np.array_equal(result.vectors, vectors)
    assert result.token_counts == [3, 4, 5]
    assert second[1] == ("cancel", 2)


def test_the_blocking_reader_sees_frames_then_the_close() -> None:
    ours, theirs = socket.socketpair()
    big = [("embed", i, [[5] * 1000], EmbedOptions()) for i in range(200)]  # > one socket buffer
    with ours:
        sender = threading.Thread(target=lambda: (ours.sendall(wire.frame(big)), ours.close()))
        sender.start()
        assert wire.receive_frame(theirs) == big
        assert wire.receive_frame(theirs) is None
        sender.join()
    theirs.close()
