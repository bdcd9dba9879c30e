"""A process's age from the kernel's own record, so the interpreter's start and its imports
count: the worker's start metric (metrics.py) and the engine's start-up log (engine/process.py)
both read it. Standard library only: the engine may not import the metrics libraries."""

from __future__ import annotations

import os
import time


def process_age_seconds(digits: int | None = None) -> float | None:
    """Seconds since this process started, from the kernel's own start time (/proc, Linux),
    so the interpreter's start and imports count, rounded to `digits` when given (for logs);
    None where /proc has no such record."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            # Fields after the command name (which may hold spaces): starttime is the 20th.
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    age = max(0.0, since_boot - started_ticks / os.sysconf("SC_CLK_TCK"))
    return age if digits is None else round(age, digits)
