"""Runs a runner's preparation (runners/base.py: compiled kernels, attention plans, CUDA
graphs) on the engine's compute thread after Ready, a short step at a time: whenever the
engine is idle, and while it is busy one step per `busy_interval` at most, so a worker that
meets load the moment it is Ready still gets fast within seconds while its batches keep most
of the GPU. A request waits at most one step (about 0.1 s) for it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("embedfleet.worker")

# While busy: one step (~0.1 s) per second at most, under 10% of the compute thread's time.
BUSY_INTERVAL_SECONDS = 1.0
# While idle and only background work is left (the kernels compiling on their own thread):
# how long the compute thread sleeps between looks, unless a request arrives first.
IDLE_POLL_SECONDS = 0.05


class Preparation:
    """Steps through `steps` until they end; a step that raises ends the preparation (the
    runner keeps serving as it is) and is logged. `on_done(prepared)` is told either way."""

    def __init__(
        self,
        steps: Iterator[bool],
        on_done: Callable[[bool], None] | None = None,
        busy_interval: float = BUSY_INTERVAL_SECONDS,
    ) -> None:
        self._steps: Iterator[bool] | None = steps
        self._on_done = on_done
        self._busy_interval = busy_interval
        self._last_step = float("-inf")

    @property
    def pending(self) -> bool:
        return self._steps is not None

    def due(self, now: float) -> bool:
        """Whether a busy compute thread should run a step now."""
        return self._steps is not None and now - self._last_step >= self._busy_interval

    def step(self) -> bool:
        """Runs one step: True if it did work, False if it only waits on background work (or
        has ended)."""
        if self._steps is None:
            return False
        self._last_step = time.perf_counter()
        try:
            return next(self._steps)
        except StopIteration:
            self._end(True)
        except Exception as error:
            log.warning("preparing the model failed; it serves unprepared", exc_info=error)
            self._end(False)
        return False

    def _end(self, prepared: bool) -> None:
        self._steps = None
        if self._on_done is not None:
            self._on_done(prepared)
