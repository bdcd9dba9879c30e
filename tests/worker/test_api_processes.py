"""`--api-processes 2`: two HTTP processes on one port and one engine process. What it must
keep: every request answered, the metrics whole whichever process a scrape reaches, a clean
drain on SIGTERM with nothing left behind, and an exit 1 when a process dies."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.cluster.processes import wait_until
from tests.worker.server_process import WorkerProcess, start_worker
from tests.worker.test_engine_process import alive, children

REQUESTS = 120


def api_child(worker: WorkerProcess) -> int:
    """The further API process: once the worker is Ready it is there and takes connections."""
    found = [
        pid
        for pid, command in children(worker.process.pid).items()
        if b"embedfleet_worker.http.api_processes" in command
    ]
    assert len(found) == 1, found
    assert worker.log().count("Application startup complete") == 2, worker.log()[-3000:]
    return found[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(worker: WorkerProcess) -> float:
    """embedfleet_requests_total{code="200"}, from a new connection (so any process)."""
    with httpx.Client() as client:
        text = client.get(worker.base_url + "/metrics").text
    for line in text.splitlines():
        if line.startswith('embedfleet_requests_total{code="200"}'):
            return float(line.split()[-1])
    raise AssertionError("embedfleet_requests_total not exported")


def test_both_processes_serve_and_every_scrape_counts_all(tmp_path: Path) -> None:
    worker = start_worker(tmp_path, "--api-processes", "2")
    try:
        child = api_child(worker)
        before = {pid: cpu_seconds(pid) for pid in (worker.process.pid, child)}

        def one(index: int) -> int:
            with httpx.Client() as client:  # a connection each: the kernel spreads them
                response = client.post(
                    worker.api_url + "/embeddings", json={"input": f"text number {index}"}
                )
                return response.status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(one, range(REQUESTS)))
        assert codes == [200] * REQUESTS
        used = {pid: cpu_seconds(pid) - before[pid] for pid in before}
        assert all(seconds > 0.05 for seconds in used.values()), used
        # The warm-up requests are not API requests: each scrape sees exactly these.
        assert [served(worker) for _ in range(6)] == [float(REQUESTS)] * 6
    finally:
        assert worker.terminate() == 0, worker.log()[-3000:]
    assert not alive(child)


def test_a_dead_api_process_stops_the_worker_with_status_1(tmp_path: Path) -> None:
    worker = start_worker(tmp_path, "--api-processes", "2")
    try:
        child = api_child(worker)
        engines = [p for p, c in children(worker.process.pid).items() if b"engine.process" in c]
        os.kill(child, signal.SIGKILL)
        assert worker.process.wait(60) == 1, worker.log()[-3000:]
    finally:
        worker.terminate()  # after a failed assertion above, no process is left behind
    assert "API process" in worker.log()
    wait_until(lambda: not any(alive(pid) for pid in engines), timeout=30, what="the engine gone")
