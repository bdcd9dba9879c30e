"""How long a worker takes to start, measured from the pods' own timings: from a pod's
creationTimestamp to its Ready condition turning True, the whole wait a scale-up pays
(scheduling, image pull, process start, model load). Pure: the autoscaler feeds it the pods it
already holds from the watch-fed cache, once per tick, and keeps the result per service."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Manifest = dict[str, Any]

RECENT_STARTS = 5  # the estimate is the median of this many most recent starts


def _timestamp(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pod_start_seconds(pod: Manifest) -> float | None:
    """Seconds from the pod's creation to its Ready condition turning True; None when the pod is
    not ready, or its timings cannot say: Kubernetes keeps only the Ready condition's last
    transition, so after a container restart (or on a pod being deleted) it no longer tells
    the first start."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return None
    if any(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or []):
        return None
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        return None
    created, became = (
        _timestamp(meta.get("creationTimestamp")),
        _timestamp(ready.get("lastTransitionTime")),
    )
    if created is None or became is None or became < created:
        return None
    return became - created


@dataclass(frozen=True)
class StartHistory:
    """One service's measured starts: the pods already looked at (each is measured once, the
    first time it is seen ready), and the most recent starts, oldest first."""

    seen: frozenset[str] = frozenset()  # uids of the current pods already looked at
    starts: tuple[float, ...] = ()

    @property
    def estimate(self) -> float | None:
        """The start a scale-up should expect: the median of the recent starts, so one slow
        start (a fresh node pulling the image) or one fast one (a warm node) does not swing
        the decisions that use it. None until one start has been measured."""
        return statistics.median(self.starts) if self.starts else None


def record_starts(
    history: StartHistory, pods: Sequence[Manifest]
) -> tuple[StartHistory, list[float]]:
    """The history after looking at this tick's pods, and the starts measured for the first
    time (each pod is measured once, when first seen ready; pods gone are forgotten)."""
    seen: set[str] = set()
    measured: list[float] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or meta.get("name") or "")
        if uid in history.seen:
            seen.add(uid)
            continue
        status = pod.get("status") or {}
        conditions = status.get("conditions") or []
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            continue  # not ready yet: looked at again next tick
        seen.add(uid)
        start = pod_start_seconds(pod)
        if start is not None:
            measured.append(start)
    starts = (*history.starts, *measured)[-RECENT_STARTS:]
    return StartHistory(frozenset(seen), starts), measured
