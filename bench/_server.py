"""The real `embedfleet-worker serve` as a subprocess on a free loopback port, for benchmarks
that measure what a user's client sees over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_worker(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None, ready_timeout: float = 900,
    cpus: frozenset[int] | None = None,
) -> Iterator[Server]:  # fmt: skip
    """Yields the worker's base URL and pid once `/ready` answers 200; SIGTERM and wait on exit.
    `env` adds to the environment (PYTHONPATH: serve another checkout's worker); `cpus` keeps
    the worker and the processes it starts on those CPUs."""
    port = free_port()
    command = [sys.executable, "-m", "embedfleet_worker.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", *args]  # fmt: skip
    environ = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=environ,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while not _ready(base_url):
            failed = process.poll() is not None or _load_failed(base_url)
            if failed or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not get ready; see {log}:\n{_tail(log)}")
            time.sleep(0.2)
        yield Server(base_url, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _load_failed(base_url: str) -> bool:
    """The worker stays up after a failed model load (its /health says so): stop waiting."""
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=2):
            return False
    except urllib.error.HTTPError as error:
        return error.code == 503
    except (urllib.error.URLError, OSError):
        return False


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""
