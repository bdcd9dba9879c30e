"""How late the HTTP event loop runs. Parsing, tokenisation hand-offs and serialisation all
happen on it: when something blocks it (a long computation, a GIL held by another thread),
every request waits. A sleeper wakes every `PERIOD_S` and reports how late it woke."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

PERIOD_S = 0.05


async def watch_event_loop(observe: Callable[[float], None], period_s: float = PERIOD_S) -> None:
    while True:
        due = time.perf_counter() + period_s
        await asyncio.sleep(period_s)
        observe(max(0.0, time.perf_counter() - due))
