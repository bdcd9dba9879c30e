"""When each service's autoscaling tick and resync run: spread over the period (each service
at its own phase, from its uid, so 200 services do not all tick in the same second after a
restart), bounded (at most `concurrency` passes at once across services), and measured (how
late each tick started; ticks more than a period late are skipped, not queued, and counted).

At 200 services on kopf's per-resource timers 58% of due ticks never ran while nothing in
status or metrics said so (issue 16). The schedule arithmetic is pure; `ServiceLoop` runs it
inside the kopf daemon of one service."""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


def phase_of(uid: str, period: float) -> float:
    """A service's fixed offset within the period, spread evenly over services."""
    return (zlib.crc32(uid.encode()) % 10_000) / 10_000 * period


def next_due(now: float, period: float, phase: float) -> float:
    """The first time at or after `now` that is `phase` past a multiple of `period`."""
    return phase + math.ceil((now - phase) / period) * period


@dataclass(frozen=True)
class Slot:
    """The tick to run when a service's loop wakes at `now` for the tick due at `due`: the
    latest one due, never a queue of stale ones."""

    late: float  # seconds after the latest due time
    skipped: int  # earlier due ticks that came and went unrun
    next_due: float


def slot(due: float, now: float, period: float) -> Slot:
    missed = math.floor(max(0.0, now - due) / period)
    latest = due + missed * period
    return Slot(max(0.0, now - latest), missed, latest + period)


class Stopped(Protocol):
    """kopf's DaemonStopped flag: true once the daemon must end."""

    def __bool__(self) -> bool: ...


Pass = Callable[[float, int], Awaitable[None]]  # (seconds late, ticks skipped since last)


class ServiceLoop:
    """One service's ticks and resyncs, for as long as its kopf daemon runs."""

    def __init__(
        self,
        *,
        uid: str,
        tick_seconds: float,
        resync_seconds: float,
        gate: asyncio.Semaphore,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.tick_seconds, self.resync_seconds = tick_seconds, resync_seconds
        self.phase = phase_of(uid, tick_seconds)
        self._gate, self._clock, self._sleep = gate, clock, sleep

    async def run(
        self, stopped: Stopped, tick: Pass, resync: Callable[[], Awaitable[None]]
    ) -> None:
        now = self._clock()
        due = next_due(now + self.tick_seconds, self.tick_seconds, self.phase)
        resync_due = now + min(self.resync_seconds, 5.0)  # soon after start, then each period
        while not stopped:
            wake = min(due, resync_due)
            await self._sleep(max(0.0, wake - self._clock()))
            if stopped:
                return
            async with self._gate:
                now = self._clock()
                if now >= resync_due:
                    resync_due = now + self.resync_seconds
                    await resync()
                    now = self._clock()
                if now < due:
                    continue
                planned = slot(due, now, self.tick_seconds)
                due = planned.next_due
                await tick(planned.late, planned.skipped)
