"""How late the HTTP event loop runs. Parsing, tokenisation hand-offs and serialisation all
happen on it: when something blocks it (a long computation, a GIL held by another thread),
every request waits. A sleeper wakes every `PERIOD_S` and reports how late it woke; the
histogram says how often, `StallLogger` (opt-in) says where."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

PERIOD_S = 0.05
STACK_FRAMES = 12  # of the loop thread's stack, innermost last
GC_KEPT = 64  # recent garbage collections remembered, to match them to stalls

log = logging.getLogger("embedfleet.worker")


async def watch_event_loop(observe: Callable[[float], None], period_s: float = PERIOD_S) -> None:
    while True:
        due = time.perf_counter() + period_s
        await asyncio.sleep(period_s)
        observe(max(0.0, time.perf_counter() - due))


class StallLogger:
    """A thread that pings the event loop every `threshold_s` and, when a ping waits longer
    than that, logs one WARNING once the loop answers:
    - `stalled_ms`: how long the loop did not answer;
    - `loop_cpu_ms`: the CPU time the loop's thread used meanwhile. Close to `stalled_ms`, it
      was computing (a slow callback, a burst of them, a garbage collection); close to 0, it
      was waiting (for the GIL, for a CPU, in a blocking call);
    - `gc_ms` / `gc_generation`: garbage collections in the process during the stall;
    - `ready_callbacks` (asyncio's own loop only) and `loop_stack`, the loop thread's stack
      when the threshold passed. It ends at the loop's run call when no Python callback ran.
    Create it on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold_s: float) -> None:
        if threshold_s <= 0:
            raise ValueError("the stall threshold must be positive")
        self.loop = loop
        self.threshold_s = threshold_s
        self.loop_thread = threading.get_ident()
        self._loop_cpu = _thread_cpu_clock(self.loop_thread)
        self.stalls = 0
        # (ended, seconds, generation) of recent collections; appended from any thread
        self._collections: collections.deque[tuple[float, float, int]] = collections.deque(
            maxlen=GC_KEPT
        )
        self._gc_started = 0.0
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="embedfleet-loop-stalls", daemon=True
        )

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        elif self._gc_started:
            self._collections.append((now, now - self._gc_started, int(info["generation"])))

    def _cpu_seconds(self) -> float:
        return time.clock_gettime(self._loop_cpu) if self._loop_cpu is not None else 0.0

    def _watch(self) -> None:
        while not self._stopped.wait(self.threshold_s):
            answered = threading.Event()
            sent, cpu = time.perf_counter(), self._cpu_seconds()
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
            ended, loop_cpu = time.perf_counter(), self._cpu_seconds() - cpu
            during = [c for c in list(self._collections) if sent <= c[0] <= ended]
            self.stalls += 1
            log.warning(
                "event loop stalled",
                extra={
                    "stalled_ms": round((ended - sent) * 1000, 1),
                    "loop_cpu_ms": round(loop_cpu * 1000, 1) if self._loop_cpu else None,
                    "gc_ms": round(sum(c[1] for c in during) * 1000, 1),
                    "gc_generation": max((c[2] for c in during), default=None),
                    "ready_callbacks": ready,
                    "loop_stack": stack,
                },
            )


def _thread_cpu_clock(thread_id: int) -> int | None:
    """The CPU-time clock of a thread of this process (None where the platform has none)."""
    try:
        return time.pthread_getcpuclockid(thread_id)
    except (AttributeError, OSError):
        return None
