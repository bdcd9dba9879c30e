"""Runs the app under uvicorn with a graceful drain: on SIGTERM (or SIGINT) `/ready` turns 503
at once and new API requests get 503 while the socket stays open (endpoints take a moment to
drop the pod); in-flight requests finish, bounded by the drain timeout; then the process
exits 0. A second signal exits at once. If the engine process dies, its requests get 503 and
the server exits 1."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from types import FrameType

import uvicorn

from embedfleet_worker.engine.launch import LaunchedEngine
from embedfleet_worker.http.app import create_app
from embedfleet_worker.http.protocol import tracking_protocol
from embedfleet_worker.http.worker_state import WorkerState
from embedfleet_worker.logs import configure_logging
from embedfleet_worker.settings import WorkerSettings

log = logging.getLogger("embedfleet.worker")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: WorkerState) -> None:
        super().__init__(config)
        self.state = state

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # A further API process says it is ready only now that it accepts on the shared socket
        # (after its lifespan, which loads): the main process then turns Ready.
        if self.state.ready_pipe is not None and self.started:
            os.write(self.state.ready_pipe, b"1")
            os.close(self.state.ready_pipe)
            self.state.ready_pipe = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.api_processes is not None:
            self.state.api_processes.signal(sig)  # each drains its own requests
        if self.state.draining:
            super().handle_exit(sig, frame)  # second signal: stop now
            return
        self.state.draining = True
        log.info("draining", extra={"signal": sig, "in_flight": self.state.in_flight})
        threading.Thread(target=self._finish_drain, name="embedfleet-drain", daemon=True).start()

    async def on_tick(self, counter: int) -> bool:
        if self.state.broken and not self.should_exit:
            log.error("stopping: a worker process is gone", extra={"error": self.state.load_error})
            self.should_exit = True
        return await super().on_tick(counter)

    def _finish_drain(self) -> None:
        deadline = time.monotonic() + self.state.settings.drain_timeout_seconds
        while self.state.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("drained", extra={"in_flight_left": self.state.in_flight})
        self.should_exit = True


def serve(
    settings: WorkerSettings,
    *,
    argv: Sequence[str] = (),  # the serve flags as given: the further API processes get them
    listen: socket.socket | None = None,
    engine_socket: socket.socket | None = None,
    ready_pipe: int | None = None,
    launched: LaunchedEngine | None = None,
) -> int:
    """Runs the worker (the main API process), or with `listen` and `engine_socket` one of its
    further API processes (api_processes.py). `launched`: the engine process the command
    started before this module was imported (engine/launch.py)."""
    configure_logging(settings.log_level)
    state = WorkerState.from_settings(
        settings,
        argv=argv,
        listen=listen,
        engine_socket=engine_socket,
        ready_pipe=ready_pipe,
        launched=launched,
    )
    config = uvicorn.Config(
        create_app(state),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        http=tracking_protocol(state.connections),
        loop="auto",  # uvloop when installed
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        # The connection table keys connections by peer address: never rewrite it from
        # X-Forwarded-For (nothing here reads forwarded headers).
        proxy_headers=False,
    )
    if state.listen is None and settings.api_processes > 1:
        state.listen = config.bind_socket()  # shared with the further API processes
    server = DrainingServer(config, state)
    server.run(sockets=None if state.listen is None else [state.listen])
    return 0 if state.load_error is None else 1
