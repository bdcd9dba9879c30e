"""The embedding engine: admission, token-budget batching and a compute thread.

`submit` admits tokenised inputs from any thread into the `scheduler` (queue, admission,
batch planning, progress; pure); one compute thread runs the batches it plans and hands each
request's vectors, in input order, to its completion callback. A failing batch fails only the
requests it held; an abandoned (cancelled) request is dropped before compute. `embed` is the
in-process async form (tokenising first); the worker's HTTP process reaches an engine in its
own process instead (`engine.process`)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from embedfleet_worker.engine.errors import (
    BatchFailedError,
    EngineUnavailableError,
    InvalidInputError,
)
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.engine.pooling import finalize_rows
from embedfleet_worker.engine.preparation import IDLE_POLL_SECONDS, Preparation
from embedfleet_worker.engine.scheduler import ScheduledRequest, Scheduler, SchedulerLimits
from embedfleet_worker.engine.tokenization import Input, InputEncoder, RequestEncoder
from embedfleet_worker.model.runners.base import EmbeddingRunner, SteppedRunner
from embedfleet_worker.settings import WorkerSettings

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: Vectors  # [num_inputs, dims] float32, in input order
    token_counts: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


# Called once per request, from the compute thread: (result, None) or (None, error).
Completion = Callable[[EmbeddingResult | None, Exception | None], None]


@dataclass(frozen=True)
class EngineConfig:
    # Worker settings (`serve` flags): their defaults are the declaration's, in settings.py.
    max_batch_tokens: int = WorkerSettings.max_batch_tokens
    max_batch_size: int = WorkerSettings.max_batch_size
    max_queue_tokens: int = WorkerSettings.max_queue_tokens  # admission; beyond it: 429
    # Requests with at most this many tokens left (single queries) jump ahead, and while one
    # waits bulk inputs fill its batch only up to interactive_batch_tokens (latency).
    interactive_tokens: int = 512
    interactive_batch_tokens: int = 2048
    tokenizer_threads: int = 2
    prepare_before_ready: bool = WorkerSettings.prepare_before_ready

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> EngineConfig:
        """The worker's settings of the same names; the other knobs keep their defaults."""
        names = {f.name for f in fields(WorkerSettings)}
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls) if f.name in names})


class EngineObserver(Protocol):
    """Hooks for metrics; called from the compute thread, so they must be cheap."""

    def on_batch(self, num_inputs: int, num_tokens: int, busy_seconds: float) -> None: ...

    def on_queue_wait(self, seconds: float) -> None: ...

    def on_queue_depth(self, tokens: int, requests: int) -> None: ...


class _NullObserver:
    def on_batch(self, num_inputs: int, num_tokens: int, busy_seconds: float) -> None:
        pass

    def on_queue_wait(self, seconds: float) -> None:
        pass

    def on_queue_depth(self, tokens: int, requests: int) -> None:
        pass


@dataclass(eq=False, kw_only=True)
class _Request(ScheduledRequest):
    """A request's place in the scheduler plus what running it needs."""

    sequences: list[list[int]]
    options: EmbedOptions
    normalize: bool
    on_done: Completion
    results: list[Vectors | None] = field(default_factory=list)
    done: int = 0  # inputs whose vectors are back
    failed: bool = False  # told of a failure once; a later failing batch does not tell it again


Ticket = _Request  # what `submit` returns: something to `cancel()`


class EmbeddingEngine:
    def __init__(
        self,
        runner: EmbeddingRunner,
        encoder: InputEncoder | None,
        config: EngineConfig | None = None,
        *,
        normalize_by_default: bool = True,
        observer: EngineObserver | None = None,
    ) -> None:
        self.runner = runner
        self.encoder = encoder
        self.config = config or EngineConfig()
        self.normalize_by_default = normalize_by_default
        self.observer: EngineObserver = observer or _NullObserver()
        c = self.config
        self._scheduler: Scheduler[_Request] = Scheduler(
            SchedulerLimits(
                max_batch_tokens=c.max_batch_tokens,
                max_batch_size=c.max_batch_size,
                max_queue_tokens=c.max_queue_tokens,
                interactive_tokens=c.interactive_tokens,
                interactive_batch_tokens=c.interactive_batch_tokens,
            )
        )
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._preparation: Preparation | None = None
        # In-process use (`embed`) tokenises here; an engine process gets token ids only.
        self._request_encoder = (
            None if encoder is None else RequestEncoder(encoder, self.config.tokenizer_threads)
        )
        self.busy_seconds = 0.0
        self.interleaved_batches = 0  # query batches run between a bulk batch's layers

    # ----------------------------------------------------------------------- lifecycle
    def start(self, warm_up: Callable[[], None] | None = None) -> None:
        """Starts the compute thread. `warm_up` runs on it before any batch, and this returns
        once it has run, raising what it raised (the thread then ends): what it prepares that
        is kept per thread (cuDNN's attention plans, cuBLAS's handle) is then the compute
        thread's own."""
        if self._thread is not None:
            return
        warmed = threading.Event()
        failures: list[BaseException] = []

        def compute() -> None:
            try:
                if warm_up is not None:
                    warm_up()
            except BaseException as error:  # re-raised by start, on the caller's thread
                failures.append(error)
                return
            finally:
                warmed.set()
            self._run()

        self._thread = threading.Thread(target=compute, name="embedfleet-compute", daemon=True)
        self._thread.start()
        warmed.wait()
        if failures:
            self._thread.join()
            raise failures[0]

    def prepare_between_batches(self, preparation: Preparation) -> None:
        """Runs `preparation` on the compute thread from now on, between batches
        (engine/preparation.py); once only."""
        with self._cond:
            if self._preparation is None:
                self._preparation = preparation
                self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finishes what is queued, then stops the compute thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._request_encoder is not None:
            self._request_encoder.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def queue_depth(self) -> tuple[int, int]:
        with self._cond:
            return self._scheduler.depth

    # ----------------------------------------------------------------------- public API
    async def embed(self, inputs: Sequence[Input], options: EmbedOptions) -> EmbeddingResult:
        """Tokenises and embeds `inputs` in this process."""
        if not self.running or self._request_encoder is None:
            raise EngineUnavailableError("the engine is not running or takes token ids only")
        options.validate(self.runner.hidden_size)
        sequences = await self._request_encoder.encode(inputs, options)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[EmbeddingResult] = loop.create_future()

        def done(result: EmbeddingResult | None, error: Exception | None) -> None:
            loop.call_soon_threadsafe(_resolve, future, result, error)

        ticket = self.submit(sequences, options, on_done=done)
        try:
            return await future
        except asyncio.CancelledError:
            ticket.cancel()
            raise

    def submit(
        self, sequences: list[list[int]], options: EmbedOptions, *, on_done: Completion
    ) -> Ticket:
        """Admits tokenised inputs; `on_done` gets the result. Raises at once when the request
        cannot be admitted (empty, invalid options, queue full, engine stopped)."""
        if not self.running:
            raise EngineUnavailableError("the engine is not running")
        if len(sequences) == 0:
            raise InvalidInputError("input must not be empty", param="input")
        options.validate(self.runner.hidden_size)
        request = _Request(
            request_id=next(self._ids),
            lengths=[len(s) for s in sequences],
            enqueued_at=time.perf_counter(),
            sequences=sequences,
            options=options,
            normalize=self.normalize_by_default if options.normalize is None else options.normalize,
            on_done=on_done,
            results=[None] * len(sequences),
        )
        self._admit(request)
        return request

    def _admit(self, request: _Request) -> None:
        with self._cond:
            if self._stopping:
                raise EngineUnavailableError("the engine is shutting down")
            self._scheduler.admit(request)
            self.observer.on_queue_depth(*self._scheduler.depth)
            self._cond.notify()

    # ----------------------------------------------------------------------- compute thread
    def _run(self) -> None:
        while (next_batch := self._next_batch()) is not None:
            batch, queries_only = next_batch
            if batch:
                self._execute(batch, stepped=not queries_only)
            prep = self._preparation
            if prep is not None and prep.due(time.perf_counter()):
                prep.step()

    def _next_batch(self) -> tuple[list[tuple[_Request, int]], bool] | None:
        """The next batch (waiting for one, preparing the runner meanwhile) and whether it
        holds queries only; None once stopping with nothing queued."""
        while (prep := self._idle_preparation()) is not None:
            if not prep.step():  # only background work left: look again soon
                with self._cond:
                    if not self._scheduler.queue and not self._stopping:
                        self._cond.wait(IDLE_POLL_SECONDS)
        with self._cond:
            scheduler = self._scheduler
            while not scheduler.queue and not self._stopping:
                if self._preparation is not None and self._preparation.pending:
                    return [], False  # given a preparation while waiting: run it
                self._cond.wait()
            if scheduler.drop_abandoned():
                self.observer.on_queue_depth(*scheduler.depth)
            if not scheduler.queue:
                return None if self._stopping else ([], False)
            # With a runner that pauses between layers, waiting queries run on their own
            # (small batches: CUDA graphs on a GPU) and bulk batches stay full size, since a
            # query arriving later is run between the bulk batch's layers.
            stepped = isinstance(self.runner, SteppedRunner)
            queries_only = stepped and scheduler.has_interactive()
            return self._take(interactive_only=queries_only), queries_only

    def _idle_preparation(self) -> Preparation | None:
        """The preparation, if it has steps left and nothing else is to be done."""
        with self._cond:
            prep, idle = self._preparation, not self._scheduler.queue and not self._stopping
        return prep if idle and prep is not None and prep.pending else None

    def _waiting_interactive_batch(self) -> list[tuple[_Request, int]]:
        """Queries that arrived while a bulk batch runs: taken between its layers."""
        with self._cond:
            if not self._scheduler.has_interactive():
                return []
            return self._take(interactive_only=True)

    def _take(self, *, interactive_only: bool) -> list[tuple[_Request, int]]:
        """The scheduler's next batch, its queue waits and depth reported (lock held)."""
        taken = self._scheduler.take(interactive_only=interactive_only, now=time.perf_counter())
        for wait in taken.queue_waits:
            self.observer.on_queue_wait(wait)
        self.observer.on_queue_depth(*self._scheduler.depth)
        return taken.inputs

    def _execute(self, batch: list[tuple[_Request, int]], *, stepped: bool) -> None:
        """Runs the batch (a large bulk batch with a stepped runner layer by layer, waiting
        queries between its layers; never a batch of queries, which the queries arriving
        meanwhile would only delay), finalises its vectors on the device for the whole batch
        at once, and completes the requests it ends.

        Launching the next query batch before this one is delivered was measured twice and
        dropped both times (H200, 4B, single queries over HTTP): before CUDA graphs it halved
        the batches (945 -> 632/s); with them it gained for `base64` (1,582 -> 1,661/s) and
        lost for `float` (1,562 -> 1,415/s). A high-priority stream for the queries run between
        a bulk batch's steps changed neither the query p99 nor the stream's throughput beyond
        noise (BENCHMARKS.md, sixth session)."""
        sequences = [request.sequences[index] for request, index in batch]
        tokens = sum(len(s) for s in sequences)
        started = time.perf_counter()
        nested = 0.0  # time spent on queries run between this batch's layers
        try:
            with torch.inference_mode():
                if (
                    stepped
                    and tokens > self.config.interactive_batch_tokens
                    and isinstance(self.runner, SteppedRunner)
                ):
                    forward = self.runner.start(sequences)
                    while not forward.step():
                        small = self._waiting_interactive_batch()
                        if small:
                            before = time.perf_counter()
                            self.interleaved_batches += 1
                            self._execute(small, stepped=False)
                            nested += time.perf_counter() - before
                    pooled = forward.result()
                else:
                    pooled = self.runner.embed(sequences)
                vectors = _finalized(batch, pooled).float().cpu().numpy()
        except Exception as error:
            self._fail({request for request, _ in batch}, error)
            return
        finally:
            busy = time.perf_counter() - started - nested
            self.busy_seconds += busy
        self.observer.on_batch(len(batch), tokens, busy)
        self._deliver_rows(batch, vectors)

    def _deliver_rows(self, batch: list[tuple[_Request, int]], vectors: Vectors) -> None:
        for row, (request, index) in enumerate(batch):
            if request.abandoned:
                continue
            request.results[index] = vectors[row]
            request.done += 1
            if request.done == len(request.sequences):
                self._complete(request)

    def _complete(self, request: _Request) -> None:
        stacked = np.stack([r for r in request.results if r is not None])
        if request.options.dimensions is not None:  # rows may be padded to the widest option
            stacked = stacked[:, : request.options.dimensions]
        result = EmbeddingResult(
            vectors=np.ascontiguousarray(stacked, dtype=np.float32),
            token_counts=[len(s) for s in request.sequences],
        )
        request.on_done(result, None)

    def _fail(self, requests: set[_Request], error: Exception) -> None:
        with self._cond:
            for request in requests:
                request.cancel()
            if self._scheduler.drop_abandoned():
                self.observer.on_queue_depth(*self._scheduler.depth)
        failure = BatchFailedError(f"the model failed on this batch: {type(error).__name__}")
        for request in requests:
            if not request.failed:  # its inputs may span two failing batches
                request.failed = True
                request.on_done(None, failure)


def _finalized(batch: list[tuple[_Request, int]], pooled: torch.Tensor) -> torch.Tensor:
    """The batch's pooled rows with each row's request options applied, on the device."""
    return finalize_rows(
        pooled, [(request.normalize, request.options.dimensions) for request, _ in batch]
    )


def _resolve(
    future: asyncio.Future[EmbeddingResult],
    result: EmbeddingResult | None,
    error: BaseException | None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)
