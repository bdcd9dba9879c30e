"""How late the HTTP event loop runs. Parsing, tokenisation hand-offs and serialisation all
happen on it: when something blocks it (a long computation, a GIL held by another thread),
every request waits. A sleeper wakes every `PERIOD_S` and reports how late it woke; the
histogram says how often, `StallLogger` (opt-in) says where."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

PERIOD_S = 0.05
STACK_FRAMES = 12  # of the loop thread's stack, innermost last

log = logging.getLogger("embedfleet.worker")


async def watch_event_loop(observe: Callable[[float], None], period_s: float = PERIOD_S) -> None:
    while True:
        due = time.perf_counter() + period_s
        await asyncio.sleep(period_s)
        observe(max(0.0, time.perf_counter() - due))


class StallLogger:
    """A thread that pings the event loop every `threshold_s` and, when a ping waits longer
    than that, logs one WARNING once the loop answers: how long it was blocked, how many
    callbacks were ready when the threshold passed (a burst of requests shows as many; one slow
    callback as few) and the loop thread's stack at that moment. Create it on the loop's
    thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold_s: float) -> None:
        if threshold_s <= 0:
            raise ValueError("the stall threshold must be positive")
        self.loop = loop
        self.threshold_s = threshold_s
        self.loop_thread = threading.get_ident()
        self.stalls = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="embedfleet-loop-stalls", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stopped.wait(self.threshold_s):
            answered = threading.Event()
            sent = time.perf_counter()
            try:
                self.loop.call_soon_threadsafe(answered.set)
            except RuntimeError:  # the loop is closed
                return
            if answered.wait(self.threshold_s):
                continue
            ready = len(getattr(self.loop, "_ready", ()))  # asyncio's own loop; uvloop: 0
            frame = sys._current_frames().get(self.loop_thread)
            stack = "".join(traceback.format_stack(frame)[-STACK_FRAMES:]) if frame else ""
            while not answered.wait(1.0):
                if self._stopped.is_set():
                    return
            self.stalls += 1
            log.warning(
                "event loop stalled",
                extra={
                    "stalled_ms": round((time.perf_counter() - sent) * 1000, 1),
                    "ready_callbacks": ready,
                    "loop_stack": stack,
                },
            )
