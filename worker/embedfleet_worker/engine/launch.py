"""Starting the engine's process, without importing torch here.

A worker's start is two interpreters that each import torch and the model code: the HTTP
process, then the engine's. Started one after the other they cost a 4B worker on the H200 about
20 s before the model even loaded (BENCHMARKS.md, cold start). So `embedfleet-worker serve`
starts the engine first, from its command line, before the HTTP process imports anything
heavy: the engine reads the same serve flags and environment, and loads while the HTTP process
imports, builds its app and loads its tokenizer. That is only done where both processes find
the same model folder without the network (a local folder, or `--offline` from the cache); a
hub id that may need a download is resolved once by the HTTP process first, as before."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from embedfleet_worker.settings import WorkerSettings

# Between the engine's socket descriptors and the serve flags it should read itself.
SERVE_FLAGS = "--serve"


@dataclass
class LaunchedEngine:
    """An engine process started before the HTTP process was ready for it: the HTTP process's
    ends of its socket pairs (the first is the main API process's), and the process."""

    process: subprocess.Popen[bytes]
    sockets: list[socket.socket]


def loads_without_network(settings: WorkerSettings) -> bool:
    """Whether the engine may resolve the model by itself: both processes then read the same
    local folder, and nothing is downloaded twice."""
    return settings.model is None or settings.offline or Path(settings.model).is_dir()


def launch_early(settings: WorkerSettings, serve_argv: Sequence[str]) -> LaunchedEngine | None:
    """Starts the engine process now, on the serve flags, when it may load by itself."""
    if not loads_without_network(settings):
        return None
    pairs = [socket.socketpair() for _ in range(settings.api_processes)]
    process = spawn_engine([theirs for _, theirs in pairs], serve_argv)
    for _, theirs in pairs:
        theirs.close()
    return LaunchedEngine(process, [ours for ours, _ in pairs])


def spawn_engine(
    socks: Sequence[socket.socket], serve_argv: Sequence[str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m embedfleet_worker.engine.process FD [FD ...] [--serve FLAGS]`, holding the
    engine's ends of the socket pairs, with this interpreter's import path (the worker may run
    from a checkout, not installed). A fresh interpreter, not a fork: CUDA cannot run in a
    forked child. Started directly rather than by multiprocessing, whose resource-tracker
    process would outlive the worker for a moment after every exit. With serve flags the
    engine loads at once; without, it waits for the main API process to say what to load."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    fds = [sock.fileno() for sock in socks]
    flags = [] if serve_argv is None else [SERVE_FLAGS, *serve_argv]
    return subprocess.Popen(
        [sys.executable, "-m", "embedfleet_worker.engine.process", *map(str, fds), *flags],
        pass_fds=fds,
        env=env,
        stdin=subprocess.DEVNULL,
    )
