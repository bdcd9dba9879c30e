"""The event loop's stall logger on a real asyncio loop and a real blocking call."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

import pytest

from embedfleet_worker.http.loop_monitor import StallLogger
from embedfleet_worker.settings import parse_settings


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # what a CPU-bound step on the loop does to every request


def _stalls_while(block: Callable[[], None]) -> tuple[list[logging.LogRecord], int, int]:
    """Runs a loop with a StallLogger (50 ms): idle for 0.3 s, then `block` on the loop. The
    stall records, and how many stalls the logger counted while idle and in all."""
    records = _Records()
    logger = logging.getLogger("embedfleet.worker")
    logger.addHandler(records)

    async def run() -> tuple[int, int]:
        stalls = StallLogger(asyncio.get_running_loop(), threshold_s=0.05)
        stalls.start()
        try:
            await asyncio.sleep(0.3)  # an idle loop answers every ping at once
            idle = stalls.stalls
            block()
            for _ in range(100):  # the logger reports once the loop answers again
                if stalls.stalls > idle:
                    break
                await asyncio.sleep(0.01)
            return idle, stalls.stalls
        finally:
            stalls.stop()

    try:
        idle, total = asyncio.run(run())
    finally:
        logger.removeHandler(records)
    return [r for r in records.records if r.getMessage() == "event loop stalled"], idle, total


def test_a_blocked_loop_is_logged_once_with_where_it_was() -> None:
    records, idle, total = _stalls_while(lambda: _hold_the_loop(0.4))
    assert (idle, total) == (0, 1)
    (record,) = records
    assert record.levelno == logging.WARNING
    assert 300 <= record.stalled_ms < 2000  # type: ignore[attr-defined]
    assert "_hold_the_loop" in record.loop_stack  # type: ignore[attr-defined]


def test_the_threshold_must_be_positive() -> None:
    async def make() -> None:
        StallLogger(asyncio.get_running_loop(), threshold_s=0)

    with pytest.raises(ValueError, match="positive"):
        asyncio.run(make())


def test_stall_logging_is_off_unless_asked_for() -> None:
    assert parse_settings([], environ={}).log_event_loop_stalls_ms == 0
    flag = parse_settings(["--log-event-loop-stalls-ms", "10"], environ={})
    assert flag.log_event_loop_stalls_ms == 10
    env = parse_settings([], environ={"EMBEDFLEET_LOG_EVENT_LOOP_STALLS_MS": "25"})
    assert env.log_event_loop_stalls_ms == 25
    with pytest.raises(SystemExit):
        parse_settings(["--log-event-loop-stalls-ms", "-1"], environ={})


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _collect_cycles() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self
            self.payload = [[i] for i in range(20)]

    for _ in range(300_000):
        Node()  # each a cycle only the collector frees
    gc.collect()


@pytest.mark.parametrize(
    ("block", "computing", "collecting"),
    [
        (lambda: _hold_the_loop(0.4), False, False),
        (lambda: _spin(0.4), True, False),
        (_collect_cycles, True, True),
    ],
    ids=["waiting", "computing", "collecting"],
)
def test_a_stall_says_whether_the_loop_waited_computed_or_collected(
    block: Callable[[], None], computing: bool, collecting: bool
) -> None:
    (record, *_), _, _ = _stalls_while(block)
    stalled, cpu = record.stalled_ms, record.loop_cpu_ms  # type: ignore[attr-defined]
    assert stalled >= 50
    if computing:
        assert cpu >= 0.5 * stalled, (cpu, stalled)
    else:
        assert cpu <= 0.2 * stalled, (cpu, stalled)
    if collecting:
        assert record.gc_ms > 0  # type: ignore[attr-defined]
        assert record.gc_generation == 2  # type: ignore[attr-defined]
    else:
        assert record.gc_ms < 0.5 * stalled  # type: ignore[attr-defined]
