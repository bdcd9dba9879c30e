"""Starts a real `embedfleet-worker serve` process on a free loopback port and waits until it
is ready: the server under test is the same program a pod runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.processes import free_loopback_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def address(self) -> tuple[str, int]:
        """(host, port), for tests that speak raw TCP."""
        host, port = self.base_url.removeprefix("http://").split(":")
        return host, int(port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)


def start_worker_unready(log_dir: Path, *args: str) -> WorkerProcess:
    """Starts the process and returns at once, before the model is loaded."""
    port = free_loopback_port()
    log_path = log_dir / f"worker-{port}.log"
    command = [
        sys.executable,
        "-m",
        "embedfleet_worker.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        *args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
    return WorkerProcess(process, f"http://127.0.0.1:{port}", log_path)


def start_worker(log_dir: Path, *args: str, ready_timeout: float = 120) -> WorkerProcess:
    worker = start_worker_unready(log_dir, *args)
    process = worker.process
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}:\n{worker.log()[-3000:]}")
        try:
            with urllib.request.urlopen(worker.base_url + "/ready", timeout=2) as response:
                if response.status == 200:
                    return worker
        except urllib.error.HTTPError as error:
            error.close()
        except OSError:
            pass
        time.sleep(0.2)
    worker.terminate()
    raise TimeoutError(f"worker not ready after {ready_timeout}s:\n{worker.log()[-3000:]}")
