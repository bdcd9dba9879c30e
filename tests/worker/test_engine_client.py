"""The HTTP process's side of the engine's socket: what it does with a frame of many answers."""

from __future__ import annotations

import asyncio
import socket

import numpy as np

from embedfleet_worker.engine import wire
from embedfleet_worker.engine.client import ANSWERS_PER_TURN, EngineClient
from embedfleet_worker.engine.executor import EmbeddingResult
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.model.loader import ModelSpec, load_encoder
from tests.modelzoo import minilm_dir


class _Observer:
    def on_batch(self, num_inputs: int, num_tokens: int, busy_seconds: float) -> None: ...
    def on_queue_wait(self, seconds: float) -> None: ...
    def on_queue_depth(self, tokens: int, requests: int) -> None: ...


def test_a_frame_of_answers_leaves_the_loop_turns_between_its_slices() -> None:
    """The engine answers a whole batch in one frame. Waking every waiting request in one loop
    turn held the loop (and every other request on it) for all their responses; each turn now
    wakes at most ANSWERS_PER_TURN, and every request still gets its own answer."""
    requests = 5 * ANSWERS_PER_TURN + 3
    front = load_encoder(ModelSpec(model=str(minilm_dir()), offline=True))
    info = wire.EngineInfo(384, "test", "float32", "cpu", 0.0)

    async def scenario() -> tuple[list[int], list[float]]:
        ours, theirs = socket.socketpair()
        client = EngineClient(
            front, info, None, await asyncio.open_connection(sock=ours), _Observer(),
            tokenizer_threads=1, on_exit=lambda reason: None,
        )  # fmt: skip
        futures: list[asyncio.Task[EmbeddingResult]] = []
        woken_at: list[int] = []  # answers already resolved when each request resumed

        async def one(text: str) -> EmbeddingResult:
            result = await client.embed([text], EmbedOptions())
            woken_at.append(requests - len(client._pending))  # answers dispatched so far
            return result

        futures += [asyncio.create_task(one(f"query {i}")) for i in range(requests)]
        embeds: list[wire.Message] = []
        while len(embeds) < requests:  # the engine's end reads what the client sent
            messages = await asyncio.to_thread(wire.receive_frame, theirs)
            assert messages is not None
            embeds += [m for m in messages if m[0] == "embed"]
        answers = [
            ("result", request_id, EmbeddingResult(np.full((1, 4), i, np.float32), [3]))
            for i, (_, request_id, _, _) in enumerate(embeds)
        ]
        theirs.sendall(wire.frame(answers))  # one frame: a whole batch's answers
        results = await asyncio.gather(*futures)
        theirs.close()
        await client.stop(0)
        return woken_at, [float(r.vectors[0, 0]) for r in results]

    woken_at, values = asyncio.run(scenario())
    assert values == [float(i) for i in range(requests)]  # each request its own answer
    # Slices: the first request to resume saw only its turn's answers resolved, not the frame.
    assert min(woken_at) <= ANSWERS_PER_TURN
