"""The engine in its own process (`engine.process`), seen from the HTTP process's event loop:
starts it, tokenises each request here and sends the token ids over, and resolves the request's
future from the answer. Reading the socket is a task on the event loop: no thread of this
process waits on the engine."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import socket
import subprocess
import time
from collections.abc import Callable, Sequence

from embedfleet_worker.engine import wire
from embedfleet_worker.engine.errors import EngineUnavailableError, InvalidInputError
from embedfleet_worker.engine.executor import EmbeddingResult, EngineConfig, EngineObserver
from embedfleet_worker.engine.launch import LaunchedEngine, spawn_engine
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.engine.tokenization import Input, InputEncoder, RequestEncoder
from embedfleet_worker.model.loader import LoadedEncoder, ModelSpec, load_encoder

log = logging.getLogger("embedfleet.worker")


class EngineStartError(RuntimeError):
    """The engine process could not load the model (the message says why)."""


class EngineClient:
    def __init__(
        self,
        front: LoadedEncoder,
        info: wire.EngineInfo,
        process: subprocess.Popen[bytes] | None,  # None: attached to another's engine
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        observer: EngineObserver,
        *,
        tokenizer_threads: int,
        on_exit: Callable[[str], None],
    ) -> None:
        self.encoder: InputEncoder = front.encoder
        self.task = front.task
        self.info = info
        self._process = process
        self._reader, self._writer = streams
        self._observer = observer
        self._on_exit = on_exit
        self._request_encoder = RequestEncoder(front.encoder, tokenizer_threads)
        self._pending: dict[int, asyncio.Future[EmbeddingResult]] = {}
        self._ids = itertools.count()
        self._stopping = False
        self._gone: str | None = None  # why the engine process is no longer there
        self._outgoing: list[wire.Message] = []  # sent together at the end of this loop turn
        self.spare_sockets: list[socket.socket] = []  # engine connections for API processes
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def start(
        cls,
        spec: ModelSpec,
        config: EngineConfig,
        observer: EngineObserver,
        *,
        log_level: str,
        stop_timeout: float,
        on_exit: Callable[[str], None],
        api_processes: int = 1,
        launched: LaunchedEngine | None = None,
    ) -> EngineClient:
        """Loads the encoder here and the model in the engine's process; returns once both are
        ready. `launched`: an engine process already started on the serve flags (launch.py),
        loading by itself meanwhile. Otherwise a hub id is resolved (downloaded) once, here,
        and a new engine process loads the local folder. With several API processes the engine
        also serves one connection for each of the others: their ends are in
        `spare_sockets`."""
        try:
            started = time.perf_counter()
            front = await asyncio.to_thread(load_encoder, spec)
            seconds = round(time.perf_counter() - started, 2)
            log.info("tokenizer loaded", extra={"tokenizer_seconds": seconds})
        except BaseException:
            if launched is not None:  # it would load a model nobody can use
                launched.process.kill()
            raise
        if launched is not None:
            process, ours = launched.process, launched.sockets
        else:
            local = dataclasses.replace(spec, model=str(front.path), offline=True)
            pairs = [socket.socketpair() for _ in range(api_processes)]
            process = await asyncio.to_thread(spawn_engine, [theirs for _, theirs in pairs])
            for _, theirs in pairs:
                theirs.close()
            ours = [mine for mine, _ in pairs]
        reader, writer = await asyncio.open_connection(sock=ours[0])
        if launched is None:
            writer.write(wire.frame([("start", local, config, log_level, stop_timeout)]))
        try:
            first = await wire.read_frame(reader)
        except asyncio.CancelledError:  # the server stops while the model loads
            process.kill()
            raise
        if first is None or first[0][0] != "ready":
            writer.close()
            code = await asyncio.to_thread(_wait, process, 10)
            if first is None:
                raise EngineStartError(f"the engine process exited (code {code})")
            raise EngineStartError(str(first[0][1]))
        client = cls._ready(first, front, process, (reader, writer), observer, config, on_exit)
        client.spare_sockets = ours[1:]
        return client

    @classmethod
    async def attach(
        cls,
        sock: socket.socket,
        spec: ModelSpec,
        config: EngineConfig,
        observer: EngineObserver,
        *,
        on_exit: Callable[[str], None],
    ) -> EngineClient:
        """For a further API process: the engine another process started, over the
        connection it made for this one (`spare_sockets`); returns once the engine is ready."""
        front = await asyncio.to_thread(load_encoder, spec)
        reader, writer = await asyncio.open_connection(sock=sock)
        first = await wire.read_frame(reader)
        if first is None or first[0][0] != "ready":
            writer.close()
            raise EngineStartError(
                "the engine process exited" if first is None else str(first[0][1])
            )
        return cls._ready(first, front, None, (reader, writer), observer, config, on_exit)

    @classmethod
    def _ready(
        cls,
        first: list[wire.Message],
        front: LoadedEncoder,
        process: subprocess.Popen[bytes] | None,
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        observer: EngineObserver,
        config: EngineConfig,
        on_exit: Callable[[str], None],
    ) -> EngineClient:
        """The client of an engine whose first frame said ready (what else it held, too)."""
        client = cls(
            front,
            first[0][1],
            process,
            streams,
            observer,
            tokenizer_threads=config.tokenizer_threads,
            on_exit=on_exit,
        )
        for message in first[1:]:
            client._dispatch(message)
        return client

    @property
    def running(self) -> bool:
        return not self._stopping and self._gone is None

    async def embed(self, inputs: Sequence[Input], options: EmbedOptions) -> EmbeddingResult:
        if not self.running:
            raise EngineUnavailableError(self._gone or "the engine is shutting down")
        options.validate(self.info.hidden_size)
        sequences = await self._request_encoder.encode(inputs, options)
        if not sequences:
            raise InvalidInputError("input must not be empty", param="input")
        return await self.run(sequences, options)

    async def run(self, sequences: list[list[int]], options: EmbedOptions) -> EmbeddingResult:
        """Token sequences as the model sees them (templates applied, e.g. a reranker's
        pairs), through the engine."""
        if not self.running:  # it may have gone while the request was tokenised
            raise EngineUnavailableError(self._gone or "the engine is shutting down")
        request_id = next(self._ids)
        future: asyncio.Future[EmbeddingResult] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._send(("embed", request_id, sequences, options))
        try:
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(request_id, None) is not None and self._gone is None:
                self._send(("cancel", request_id))
            raise

    def _send(self, message: wire.Message) -> None:
        """Queues a message for one frame per loop turn: under load the requests a turn
        admits cost the loop one send and the engine one wake-up, not one each."""
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(message)

    def _flush(self) -> None:
        messages, self._outgoing = self._outgoing, []
        if messages and not self._writer.is_closing():
            self._writer.write(wire.frame(messages))

    def start_preparing(self) -> None:
        """Tells the engine the worker is Ready: it prepares its runner (compiled kernels,
        CUDA graphs) between batches from now on. Only the engine's own API process asks."""
        if self._process is not None and self._gone is None:
            self._send(("prepare",))

    async def stop(self, drain_seconds: float) -> None:
        """Lets the engine finish what it holds (bounded by `drain_seconds`), then ends its
        process."""
        self._stopping = True
        if self._process is None:  # attached: the engine is the main API process's to stop
            self._writer.close()
            self._request_encoder.close()
            await asyncio.gather(self._reading, return_exceptions=True)
            return
        for spare in self.spare_sockets:
            spare.close()
        if self._gone is None:
            self._send(("stop",))
        if await asyncio.to_thread(_wait, self._process, drain_seconds + 5) is None:
            log.warning("engine process did not stop; killing it")
            self._process.kill()
            await asyncio.to_thread(_wait, self._process, 5)
        self._writer.close()
        self._request_encoder.close()
        await asyncio.gather(self._reading, return_exceptions=True)

    async def _read(self) -> None:
        while (messages := await wire.read_frame(self._reader)) is not None:
            for count, message in enumerate(messages, start=1):
                self._dispatch(message)
                if count % ANSWERS_PER_TURN == 0 and count < len(messages):
                    await asyncio.sleep(0)
        if self._process is None:
            self._gone = "the engine process's connection closed"
        else:
            code = await asyncio.to_thread(_wait, self._process, 5)
            self._gone = f"the engine process exited (code {code})"
        for future in self._pending.values():
            if not future.done():
                future.set_exception(EngineUnavailableError(self._gone))
        self._pending.clear()
        if not self._stopping:
            log.error("engine process exited", extra={"reason": self._gone})
            self._on_exit(self._gone)

    def _dispatch(self, message: wire.Message) -> None:
        kind = message[0]
        if kind == "result" or kind == "error":
            future = self._pending.pop(message[1], None)
            if future is None or future.done():
                return  # cancelled meanwhile
            if kind == "result":
                future.set_result(message[2])
            else:
                future.set_exception(message[2].exception())
        elif kind == "observe" and message[1] in wire.OBSERVER_HOOKS:
            getattr(self._observer, message[1])(*message[2])


# A frame holds the answers to a whole batch (40-60 single queries under load); each answer
# woken is a response written on the loop (~0.5 ms). Waking them all in one loop turn held
# everything else on the loop (new requests, timers) for 20 ms and more.
ANSWERS_PER_TURN = 8


def _wait(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    """The exit code, or None if it is still running after `seconds`."""
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        return None
