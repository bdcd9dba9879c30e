"""The engine runs in its own process beside the HTTP process. What that must never cost: a
request lost or left hanging when the engine dies, an engine process left behind when the
server goes, or work done for a client that has left."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.cluster.processes import wait_until
from tests.worker.server_process import WorkerProcess, start_worker

PASSAGE = "river mountain engine " * 60


def children(pid: int) -> dict[int, bytes]:
    """The process's children and their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = command
    return found


def engine_pid(worker: WorkerProcess) -> int:
    """The server's engine child process."""
    found = [
        pid
        for pid, command in children(worker.process.pid).items()
        if b"embedfleet_worker.engine.process" in command
    ]
    assert len(found) == 1, f"engine processes of {worker.process.pid}: {found}"
    return found[0]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def metric(worker: WorkerProcess, name: str) -> float:
    for line in httpx.get(worker.base_url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


def test_a_dead_engine_answers_its_requests_503_and_the_server_exits_1(tmp_path: Path) -> None:
    worker = start_worker(tmp_path)
    try:
        answers: list[httpx.Response | Exception] = []

        def send() -> None:
            try:
                answers.append(
                    httpx.post(
                        worker.api_url + "/embeddings",
                        json={"input": [f"{i} {PASSAGE}" for i in range(200)]},
                        timeout=60,
                    )
                )
            except httpx.HTTPError as error:
                answers.append(error)

        senders = [threading.Thread(target=send) for _ in range(4)]
        for sender in senders:
            sender.start()
        # All four are in the engine (queued or computing) when it is killed.
        wait_until(lambda: metric(worker, "embedfleet_queue_requests") >= 3, 30, "queued work")
        os.kill(engine_pid(worker), signal.SIGKILL)
        for sender in senders:
            sender.join(30)
        assert len(answers) == 4, "a request was left hanging"
        for answer in answers:
            assert isinstance(answer, httpx.Response), answer
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["code"] == "engine_unavailable"
            assert "engine process exited" in error["message"]
        assert worker.process.wait(30) == 1
    finally:
        worker.terminate()
    assert "Traceback" not in worker.log()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_engine_process_ends_with_the_server(tmp_path: Path, how: signal.Signals) -> None:
    worker = start_worker(tmp_path)
    engine = engine_pid(worker)
    # The engine is the server's only child (no helper such as multiprocessing's resource
    # tracker that would outlive it).
    assert list(children(worker.process.pid)) == [engine]
    try:
        assert httpx.post(worker.api_url + "/embeddings", json={"input": "hello"}).is_success
        worker.process.send_signal(how)
        code = worker.process.wait(60)
        assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        if how == signal.SIGTERM:  # a drained server has stopped its engine before exiting
            assert not alive(engine)
        # Killed outright, the server cannot tell its engine: the engine sees its socket close.
        wait_until(lambda: not alive(engine), 30, "the engine process to exit")
    finally:
        worker.terminate()
        if alive(engine):
            os.kill(engine, signal.SIGKILL)


def test_work_for_a_client_that_left_is_dropped_in_the_engine(tmp_path: Path) -> None:
    worker = start_worker(tmp_path)
    try:
        inputs = [f"{i} {PASSAGE}" for i in range(400)]
        before = metric(worker, "embedfleet_batch_size_sum")
        with pytest.raises(httpx.TimeoutException):
            httpx.post(worker.api_url + "/embeddings", json={"input": inputs}, timeout=0.5)
        wait_until(lambda: metric(worker, "embedfleet_queue_requests") == 0, 60, "queue empty")
        time.sleep(1)  # a batch that was running when the cancel came has finished
        assert httpx.post(worker.api_url + "/embeddings", json={"input": "still here"}).is_success
        executed = metric(worker, "embedfleet_batch_size_sum") - before - 1
        assert executed < len(inputs) / 2, f"{executed} of {len(inputs)} inputs still computed"
    finally:
        assert worker.terminate() == 0
