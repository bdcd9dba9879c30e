"""The autoscaler's schedule (ticks.py): phases spread over the period, due times, late and
skipped ticks, and one service's loop driven by a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from embedfleet_operator.ticks import ServiceLoop, next_due, phase_of, slot


def test_phases_spread_services_over_the_period() -> None:
    phases = sorted(phase_of(f"uid-{i}", 15.0) for i in range(200))
    assert phases[0] >= 0
    assert phases[-1] < 15.0
    per_second = [sum(1 for p in phases if s <= p < s + 1) for s in range(15)]
    assert max(per_second) <= 2 * 200 / 15  # no second holds more than twice its share
    assert phase_of("uid-1", 15.0) == phase_of("uid-1", 15.0)  # stable across restarts


@pytest.mark.parametrize(
    ("now", "phase", "due"),
    [(0.0, 3.0, 3.0), (3.0, 3.0, 3.0), (3.1, 3.0, 18.0), (100.0, 0.0, 105.0)],
)
def test_next_due(now: float, phase: float, due: float) -> None:
    assert next_due(now, 15.0, phase) == due


@pytest.mark.parametrize(
    ("woke", "late", "skipped", "next_in"),
    [(0.0, 0.0, 0, 15.0), (14.9, 14.9, 0, 15.0), (15.1, 0.1, 1, 30.0), (46.0, 1.0, 3, 60.0)],
)
def test_ticks_more_than_a_period_late_are_skipped_not_queued(
    woke: float, late: float, skipped: int, next_in: float
) -> None:
    planned = slot(100.0, 100.0 + woke, 15.0)
    assert planned.late == pytest.approx(late)
    assert (planned.skipped, planned.next_due - 100.0) == (skipped, next_in)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class StopAfter:
    def __init__(self, clock: Clock, at: float) -> None:
        self.clock, self.at = clock, at

    def __bool__(self) -> bool:
        return self.clock.now >= self.at


def test_a_service_loop_ticks_on_its_phase_and_resyncs_on_its_period() -> None:
    clock = Clock()
    ticks: list[tuple[float, float, int]] = []
    resyncs: list[float] = []

    async def tick(late: float, skipped: int) -> None:
        ticks.append((clock.now, late, skipped))

    async def resync() -> None:
        resyncs.append(clock.now)

    async def main() -> None:
        loop = ServiceLoop(uid="uid-a", tick_seconds=15.0, resync_seconds=30.0,
                           gate=asyncio.Semaphore(1), clock=lambda: clock.now,
                           sleep=clock.sleep)  # fmt: skip
        await loop.run(StopAfter(clock, 100.0), tick, resync)

    asyncio.run(main())
    phase = phase_of("uid-a", 15.0)
    assert [round(t - phase, 6) % 15 for t, _, _ in ticks] == [0.0] * len(ticks)
    assert len(ticks) == 5
    assert all(late == 0.0 and skipped == 0 for _, late, skipped in ticks)
    assert resyncs == [5.0, 35.0, 65.0, 95.0]


def test_a_slow_tick_makes_the_next_ones_late_then_skipped_and_says_so() -> None:
    clock = Clock()
    ticks: list[tuple[float, int]] = []

    async def tick(late: float, skipped: int) -> None:
        ticks.append((late, skipped))
        if len(ticks) == 1:
            clock.now += 40.0  # one tick takes 40 s (an API call hanging)

    async def resync() -> None:
        pass

    async def main() -> None:
        loop = ServiceLoop(uid="uid-b", tick_seconds=15.0, resync_seconds=1e9,
                           gate=asyncio.Semaphore(1), clock=lambda: clock.now,
                           sleep=clock.sleep)  # fmt: skip
        await loop.run(StopAfter(clock, 120.0), tick, resync)

    asyncio.run(main())
    assert ticks[0] == (0.0, 0)
    late, skipped = ticks[1]
    # The tick due 15 s after the slow one was skipped; the one due at 30 s ran 10 s late.
    assert (skipped, late) == (1, pytest.approx(10.0))
