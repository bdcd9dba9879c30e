"""What the HTTP layer knows about the running worker: the engine (in its own process), the
served names, the API key, and the drain state. Loading runs in the background so `/health`
answers while a large model loads."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedfleet_worker.engine.client import EngineClient
from embedfleet_worker.engine.executor import EngineConfig
from embedfleet_worker.engine.launch import LaunchedEngine
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.http.api_models import EmbeddingRequest
from embedfleet_worker.http.api_processes import ApiProcesses
from embedfleet_worker.http.connections import ConnectionLifetime, ConnectionTable
from embedfleet_worker.http.responses import embedding_body
from embedfleet_worker.metrics import WorkerMetrics
from embedfleet_worker.model.loader import model_spec
from embedfleet_worker.settings import WorkerSettings

log = logging.getLogger("embedfleet.worker")

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
API_PROCESS_START_SECONDS = 300  # a further API process loads its tokenizer and warms up


def served_names(settings: WorkerSettings) -> tuple[str, ...]:
    if settings.served_model_names:
        return settings.served_model_names
    if settings.model is None:
        return (DEFAULT_MODEL_NAME,)
    local = Path(settings.model)
    return (local.name,) if local.is_dir() else (settings.model,)


@dataclass
class WorkerState:
    settings: WorkerSettings
    metrics: WorkerMetrics
    names: tuple[str, ...]
    connections: ConnectionTable
    api_key: str | None = None
    engine: EngineClient | None = None
    load_error: str | None = None  # why the worker cannot serve: load failed or engine gone
    # The engine process or a further API process died after loading: the server exits 1.
    broken: bool = False
    listen: socket.socket | None = None  # the port's socket, shared with further API processes
    engine_socket: socket.socket | None = None  # set in a further API process: its engine link
    api_processes: ApiProcesses | None = None
    launched: LaunchedEngine | None = None  # the engine process, started with the command
    argv: tuple[str, ...] = ()  # the serve flags as given, for further API processes
    ready_pipe: int | None = None  # a further API process writes a byte here once it serves
    draining: bool = False
    in_flight: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    _ready: threading.Event = field(default_factory=threading.Event)
    _loading: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: WorkerSettings,
        *,
        argv: Sequence[str] = (),
        listen: socket.socket | None = None,
        engine_socket: socket.socket | None = None,
        ready_pipe: int | None = None,
        launched: LaunchedEngine | None = None,
    ) -> WorkerState:
        key = None
        if settings.api_key_file is not None:
            key = settings.api_key_file.read_text().strip()
            if not key:
                raise ValueError(f"{settings.api_key_file} is empty")
        connections = ConnectionTable(
            ConnectionLifetime(
                settings.max_connection_age_seconds, settings.max_connection_requests
            ),
            processes=settings.api_processes,
        )
        return cls(
            settings=settings,
            # A further API process exports the main one's process metrics (start time).
            metrics=WorkerMetrics(
                connections, process_pid=None if engine_socket is None else os.getppid()
            ),
            names=served_names(settings),
            connections=connections,
            api_key=key,
            listen=listen,
            engine_socket=engine_socket,
            argv=tuple(argv),
            ready_pipe=ready_pipe,
            launched=launched,
        )

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self.draining

    def start_loading(self) -> asyncio.Task[None]:
        """Starts loading on the running event loop; `ready` turns true when it is done."""
        task = asyncio.get_running_loop().create_task(self._load())
        self._loading = task  # a task nobody holds may be garbage-collected mid-way
        return task

    async def _load(self) -> None:
        s = self.settings
        spec = model_spec(s)
        config = EngineConfig.from_settings(s)
        try:
            if self.engine_socket is not None:  # a further API process: the engine runs
                engine = await EngineClient.attach(
                    self.engine_socket, spec, config, self.metrics, on_exit=self._lost
                )
            else:
                engine = await EngineClient.start(
                    spec,
                    config,
                    self.metrics,
                    log_level=s.log_level,
                    stop_timeout=s.drain_timeout_seconds,
                    on_exit=self._lost,
                    api_processes=s.api_processes,
                    launched=self.launched,
                )
            await _warm_up(engine)
            if engine.spare_sockets and self.listen is not None:
                self.api_processes = ApiProcesses.start(
                    self.listen, engine.spare_sockets, self.argv, self._lost
                )
                await self.api_processes.wait_ready(API_PROCESS_START_SECONDS)
        except Exception as error:  # any failure is reported through /health and the log
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("model load failed", extra={"error": self.load_error})
            return
        self.engine = engine
        # Everything loaded so far lives as long as the process: out of the collector's reach,
        # a full collection no longer walks it (about 100 ms for this process's 260K objects
        # on a 2-core machine, a stall of every request in flight).
        gc.freeze()
        info = engine.info
        self.metrics.model_info.labels(
            model=self.names[0],
            revision=s.revision or "",
            dtype=info.dtype_name,
            fingerprint=info.fingerprint,
            task=engine.task.value,
        ).set(1)
        if self.engine_socket is None:  # the main API process: its start is the worker's
            self.metrics.on_ready(info.load_seconds)
            # After the warm-up query, not before: compiling beside it slowed that one query
            # to 3-4 s on the H200 (BENCHMARKS.md), all of it before Ready.
            engine.start_preparing()
        self._ready.set()
        log.info(
            "model ready",
            extra={
                "model": spec.model,
                "fingerprint": info.fingerprint,
                "dtype": info.dtype_name,
                "device": info.device,
                "load_seconds": info.load_seconds,
            },
        )

    def _lost(self, reason: str) -> None:
        """The engine process (its requests have had their 503s) or a further API process died
        under us: the server exits with status 1, so the container restarts at once, as after
        any crash."""
        self.load_error = reason
        self.broken = True
        self._ready.clear()

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self.api_processes is not None:  # they drain first: the engine serves them
            await self.api_processes.stop(self.settings.drain_timeout_seconds + 5)
        if self.engine is not None:
            await self.engine.stop(self.settings.drain_timeout_seconds)


async def _warm_up(engine: EngineClient) -> None:
    """One query through what a request uses, before Ready: the request model, the tokenizer,
    the socket, the engine and both answer encodings. A fresh worker's first request must not
    pay for first use of any of them (on the H200 the first 16-token request took 10.5 ms
    where later ones took 8.3 while only tokenizer, socket and engine were warmed). Not
    counted as served traffic."""
    body = EmbeddingRequest.model_validate({"input": ["warm up"], "encoding_format": "float"})
    result = await engine.embed([str(body.input[0])], EmbedOptions())
    for encoding in ("float", "base64"):
        embedding_body(result.vectors, result.total_tokens, "warm-up", encoding)
