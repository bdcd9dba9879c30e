"""The engine's own process: loads the model, runs the engine (scheduler and compute thread) and
answers the HTTP process over a socket pair (`engine.wire`).

Why a process: in one process the event loop, FastAPI, the access log and the compute thread
share one GIL, and a profile of the server under 128 concurrent single queries showed the
compute thread busy only a third of the time, waiting for it. Here the engine has a GIL of its
own; the HTTP process parses, tokenises and serialises. vLLM splits its API server from its
engine core the same way."""

from __future__ import annotations

import gc
import logging
import queue
import signal
import socket
import sys
import threading
import time
from functools import partial

from embedfleet_worker.engine import wire
from embedfleet_worker.engine.batching import largest_batch
from embedfleet_worker.engine.errors import EmbeddingError
from embedfleet_worker.engine.executor import EmbeddingEngine, EmbeddingResult, EngineConfig, Ticket
from embedfleet_worker.engine.launch import SERVE_FLAGS
from embedfleet_worker.engine.preparation import Preparation
from embedfleet_worker.logs import configure_logging
from embedfleet_worker.model.loader import LoadedModel, ModelSpec, load_model, model_spec
from embedfleet_worker.process_age import process_age_seconds
from embedfleet_worker.settings import parse_settings

log = logging.getLogger("embedfleet.worker")

Outbox = queue.SimpleQueue[wire.Message | None]
_WAKE: wire.Message = ("wake",)  # tells the sender a new queue depth waits; never sent


def main() -> None:
    """`python -m embedfleet_worker.engine.process FD [FD ...] [--serve FLAGS]`: each FD is the
    engine's end of one API process's socket pair. The first is the main API process's: its
    metrics hooks are forwarded to it, and it stops the engine. With `--serve` the engine reads
    what to load from the serve flags and starts at once (launch.py); without, the main API
    process's first frame says what to load."""
    args = sys.argv[1:]
    flags = args.index(SERVE_FLAGS) if SERVE_FLAGS in args else len(args)
    socks = [socket.socket(fileno=int(fd)) for fd in args[:flags]]
    if flags < len(args):
        settings = parse_settings(args[flags + 1 :])
        configure_logging(settings.log_level)
        log.info("engine process started", extra={"imports_seconds": process_age_seconds(2)})
        spec, config = model_spec(settings), EngineConfig.from_settings(settings)
        run_engine(socks, spec, config, settings.log_level, settings.drain_timeout_seconds)
        return
    start = wire.receive_frame(socks[0])
    if start is None or start[0][0] != "start":
        sys.exit(2)  # the HTTP process went before it said what to load
    _, spec, config, log_level, stop_timeout = start[0]
    run_engine(socks, spec, config, log_level, stop_timeout)


class _Link:
    """One API process's connection: its outbox, the thread that sends it, and its tickets."""

    def __init__(
        self, sock: socket.socket, outbox: Outbox, observer: _ForwardingObserver | None
    ) -> None:
        self.sock = sock
        self.outbox = outbox
        self.tickets: dict[int, Ticket] = {}
        # Held while a request is admitted and filed, and while its completion unfiles it, so
        # a request that finishes at once is never left filed.
        self.lock = threading.Lock()
        self.sender = threading.Thread(
            target=_send_frames, args=(sock, self.outbox, observer), name="embedfleet-send",
            daemon=True,
        )  # fmt: skip
        self.sender.start()

    def close(self) -> None:
        self.outbox.put(None)
        self.sender.join(timeout=5)
        self.sock.close()


def run_engine(
    socks: list[socket.socket],
    spec: ModelSpec,
    config: EngineConfig,
    log_level: str,
    stop_timeout: float,
) -> None:
    # Signals are the HTTP process's to handle: a Ctrl-C or a SIGTERM sent to the whole process
    # group must not stop the engine while the HTTP process drains. The engine stops when told
    # to, or when the main API process's socket closes (that process is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(log_level)
    main_outbox: Outbox = queue.SimpleQueue()
    observer = _ForwardingObserver(main_outbox)  # metrics go to the main API process only
    links = [
        _Link(socks[0], main_outbox, observer),
        *(_Link(sock, queue.SimpleQueue(), None) for sock in socks[1:]),
    ]
    loaded = _load(spec, config, [link.outbox for link in links], observer)
    if loaded is not None:
        engine, after_ready = loaded
        gc.freeze()  # the model and libraries: never walked by a full collection mid-batch
        for link in links[1:]:
            threading.Thread(
                target=_serve, args=(link, engine, None), name="embedfleet-receive", daemon=True
            ).start()
        _serve(links[0], engine, after_ready)  # until the main API process says stop or goes
        engine.stop(stop_timeout)
    for link in links:
        link.close()


def _load(
    spec: ModelSpec,
    config: EngineConfig,
    outboxes: list[Outbox],
    observer: _ForwardingObserver,
) -> tuple[EmbeddingEngine, Preparation | None] | None:
    """The engine, started and warmed up, and what prepares its runner once Ready (None:
    prepared already, `--prepare-before-ready`)."""
    started = time.perf_counter()
    try:
        loaded = load_model(spec, with_encoder=False)  # the HTTP process tokenises
        engine = EmbeddingEngine(
            loaded.runner,
            None,
            config,
            normalize_by_default=loaded.description.normalize_by_default,
            observer=observer,
        )
        after_ready = None
        if not config.prepare_before_ready:
            after_ready = Preparation(
                loaded.runner.preparation(), on_done=partial(_log_prepared, loaded)
            )
        try:
            engine.start(warm_up=partial(_warm_up, loaded, config))
        except Exception:
            engine.stop(0)  # its tokeniser threads
            raise
    except Exception as error:  # reported by the HTTP process through /health and its log
        for outbox in outboxes:
            outbox.put(("failed", f"{type(error).__name__}: {error}"))
        return None
    info = wire.EngineInfo(
        hidden_size=loaded.runner.hidden_size,
        fingerprint=loaded.fingerprint,
        dtype_name=loaded.dtype_name,
        device=str(loaded.runner.device),
        load_seconds=round(time.perf_counter() - started, 2),
    )
    for outbox in outboxes:
        outbox.put(("ready", info))
    return engine, after_ready


DEFAULT_SWITCH_INTERVAL = sys.getswitchinterval()
PREPARING_SWITCH_INTERVAL = 0.001

# Any model's vocabulary has these ids; what they mean does not matter to a warm-up pass.
WARM_UP_TOKENS = (1, 2, 3, 4, 5, 6, 7, 8)


def _warm_up(loaded: LoadedModel, config: EngineConfig) -> None:
    """Before Ready, on the compute thread: a first forward pass (it allocates and autotunes)
    and, on a GPU, the largest batch (the allocator's memory). The runner's preparation
    (compiled kernels, CUDA graphs) follows Ready, between batches, unless
    `--prepare-before-ready` asks for it here."""
    if config.prepare_before_ready:
        loaded.runner.prepare()
    loaded.runner.embed([list(WARM_UP_TOKENS)])
    # The total is the HTTP process's "model ready" load_seconds; here its parts: tokenizer (a
    # transformers runner's), CUDA's start and the weights (load_model), the largest batch.
    phases = dict(loaded.phases)
    if loaded.runner.device.type == "cuda":
        started = time.perf_counter()
        batch = largest_batch(config.max_batch_tokens, loaded.max_input_tokens, WARM_UP_TOKENS)
        loaded.runner.embed(batch)
        phases["largest_batch"] = round(time.perf_counter() - started, 2)
    log.info("model loaded", extra={"phases": phases})
    if config.prepare_before_ready:
        _log_prepared(loaded)


def _log_prepared(loaded: LoadedModel, prepared: bool = True) -> None:
    """Compilation, attention plans and CUDA-graph capture (Qwen3 on a GPU) have all run (or
    failed, logged by the preparation)."""
    sys.setswitchinterval(DEFAULT_SWITCH_INTERVAL)
    if not prepared:
        return
    log.info(
        "model prepared",
        extra={
            "phases": getattr(loaded.runner, "prepare_seconds", {}),
            "prepared_seconds": process_age_seconds(2),
        },
    )


def _serve(link: _Link, engine: EmbeddingEngine, after_ready: Preparation | None) -> None:
    """Admits what one API process sends until it says stop or its socket closes; the main
    one's "prepare" starts `after_ready`."""
    while True:
        messages = wire.receive_frame(link.sock)
        if messages is None:  # that API process is gone: nobody waits for what it queued
            with link.lock:
                for waiting in link.tickets.values():
                    waiting.cancel()
            return
        for message in messages:
            if message[0] == "embed":
                _, request_id, sequences, options = message
                done = partial(_reply, link, request_id)
                with link.lock:
                    try:
                        link.tickets[request_id] = engine.submit(sequences, options, on_done=done)
                    except EmbeddingError as error:
                        link.outbox.put(("error", request_id, wire.WireError.of(error)))
            elif message[0] == "cancel":
                with link.lock:
                    ticket = link.tickets.pop(message[1], None)
                if ticket is not None:
                    ticket.cancel()
            elif message[0] == "prepare" and after_ready is not None:
                # The compile thread and the compute thread share this process's interpreter:
                # a shorter switch interval hands it to the compute thread sooner.
                sys.setswitchinterval(PREPARING_SWITCH_INTERVAL)
                engine.prepare_between_batches(after_ready)
            elif message[0] == "stop":
                return


def _reply(
    link: _Link, request_id: int, result: EmbeddingResult | None, error: Exception | None
) -> None:
    with link.lock:
        link.tickets.pop(request_id, None)
    if error is not None:
        link.outbox.put(("error", request_id, wire.WireError.of(error)))
    else:
        link.outbox.put(("result", request_id, result))


def _send_frames(sock: socket.socket, outbox: Outbox, observer: _ForwardingObserver | None) -> None:
    """Sends what the outbox holds, everything waiting in one frame, until told to stop."""
    while True:
        item = outbox.get()
        messages: list[wire.Message] = []
        while True:
            if item is None:
                break
            if item is not _WAKE:
                messages.append(item)
            try:
                item = outbox.get_nowait()
            except queue.Empty:
                break
        closing = item is None
        depth = observer.take_queue_depth() if observer is not None else None
        if depth is not None:
            messages.append(("observe", "on_queue_depth", depth))
        if messages:
            try:
                sock.sendall(wire.frame(messages))
            except OSError:
                return  # the HTTP process is gone
        if closing:
            return


class _ForwardingObserver:
    """The engine's metrics hooks, sent to the HTTP process (which owns the registry). Queue
    depth changes on every admission: only its latest value travels, in the next frame."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._depth: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def on_batch(self, num_inputs: int, num_tokens: int, busy_seconds: float) -> None:
        self._outbox.put(("observe", "on_batch", (num_inputs, num_tokens, busy_seconds)))

    def on_queue_wait(self, seconds: float) -> None:
        self._outbox.put(("observe", "on_queue_wait", (seconds,)))

    def on_queue_depth(self, tokens: int, requests: int) -> None:
        with self._lock:
            waiting, self._depth = self._depth is not None, (tokens, requests)
        if not waiting:
            self._outbox.put(_WAKE)  # the sender sends it even if nothing else comes

    def take_queue_depth(self) -> tuple[int, int] | None:
        with self._lock:
            depth, self._depth = self._depth, None
        return depth


if __name__ == "__main__":
    main()
