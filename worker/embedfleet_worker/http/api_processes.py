"""Further API processes (`--api-processes N`): N-1 more HTTP processes on the same listening
socket, each with its own connection to the one engine process, so that parsing, tokenising
and writing answers run on N event loops in parallel (vLLM's `--api-server-count`). One event
loop was the limit for single queries: on an H200 it ran at 0.6-0.96 of a core while the
engine waited for requests (BENCHMARKS.md).

The main API process starts them once the engine is ready and turns Ready itself only when
each says (over a pipe) that it takes connections, so a Ready pod serves at full strength. It
forwards its signals to them (each drains its own requests), waits for them before it stops
the engine, and exits 1 if one dies, as it does when the engine dies.

    python -m embedfleet_worker.http.api_processes LISTEN_FD ENGINE_FD READY_FD [serve flags]

is one of them: the flags are the main process's, the sockets and the pipe the ones it made."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("embedfleet.worker")


class ApiProcesses:
    def __init__(
        self,
        processes: list[subprocess.Popen[bytes]],
        ready_pipes: list[int],
        on_exit: Callable[[str], None],
    ) -> None:
        self.processes = processes
        self._ready_pipes = ready_pipes
        self._on_exit = on_exit
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        for process in processes:
            threading.Thread(
                target=self._watch, args=(process,), name="embedfleet-api-watch", daemon=True
            ).start()

    @classmethod
    def start(
        cls,
        listen: socket.socket,
        engine_sockets: Sequence[socket.socket],
        argv: Sequence[str],
        on_exit: Callable[[str], None],
    ) -> ApiProcesses:
        """One process per engine socket; this process's copies of those sockets are closed."""
        processes, pipes = [], []
        for sock in engine_sockets:
            ready_read, ready_write = os.pipe()
            processes.append(_spawn(listen, sock, ready_write, argv))
            os.close(ready_write)
            sock.close()
            pipes.append(ready_read)
        log.info("api processes started", extra={"pids": [p.pid for p in processes]})
        return cls(processes, pipes, on_exit)

    async def wait_ready(self, seconds: float) -> None:
        """Until each takes connections; raises if one exits, or if `seconds` pass first."""
        deadline = time.monotonic() + seconds
        for process, pipe in zip(self.processes, self._ready_pipes, strict=True):
            left = max(0.0, deadline - time.monotonic())
            # On a timeout the pipe stays open: a thread still reads it, and closing it under
            # that thread could hand its number to another file.
            said = await asyncio.wait_for(asyncio.to_thread(os.read, pipe, 1), left)
            os.close(pipe)
            if not said:
                raise RuntimeError(f"API process {process.pid} exited before it was ready")
        self._ready_pipes = []

    def signal(self, sig: int) -> None:
        """Forwards a signal; after it, their exits are expected (each drains and exits)."""
        self._stopping = True
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(sig)

    async def stop(self, seconds: float) -> None:
        """Asks each to drain and exit (unless a forwarded signal did: a second one would stop
        them at once), and waits, killing any still there after `seconds`."""
        if not self._stopping:
            self.signal(signal.SIGTERM)
        deadline = time.monotonic() + seconds
        for process in self.processes:
            try:
                await asyncio.to_thread(process.wait, max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("api process did not stop; killing it", extra={"pid": process.pid})
                process.kill()
                await asyncio.to_thread(process.wait, 5)

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # its live gauges leave the sums
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
        if not self._stopping:
            reason = f"API process {process.pid} exited (code {code})"
            log.error("api process exited", extra={"pid": process.pid, "exit_code": code})
            self._loop.call_soon_threadsafe(self._on_exit, reason)


def _spawn(
    listen: socket.socket, engine: socket.socket, ready: int, argv: Sequence[str]
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    fds = [listen.fileno(), engine.fileno(), ready]
    return subprocess.Popen(
        [sys.executable, "-m", "embedfleet_worker.http.api_processes", *map(str, fds), *argv],
        pass_fds=fds,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def main() -> int:
    from embedfleet_worker.http.server import serve
    from embedfleet_worker.settings import parse_settings

    listen_fd, engine_fd, ready_fd, *argv = sys.argv[1:]
    return serve(
        parse_settings(argv),
        argv=argv,
        listen=socket.socket(fileno=int(listen_fd)),
        engine_socket=socket.socket(fileno=int(engine_fd)),
        ready_pipe=int(ready_fd),
    )


if __name__ == "__main__":
    sys.exit(main())
