"""Kubernetes Events about an EmbeddingService: what they say (pure) and where they go (an
EventSink: kopf's poster in production, a list in tests), and the wall clock that stamps
status and Events."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from embedfleet_operator.spec import EmbeddingService

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


class EventSink(Protocol):
    def post(self, service: EmbeddingService, event: Event) -> None: ...


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_HEALTHY = {"Ready": "True", "Degraded": "False"}
# A first Ready is news either way; a first Degraded only when it is True.
_UNSET = {"Ready": (None, None), "Degraded": ("False", None)}


def announcements(before: Manifest, after: Manifest) -> list[Event]:
    """Events for `kubectl describe`: readiness or degradation flipped, or Degraded names a
    new cause (Unschedulable, then OOMKilled)."""
    old = {c["type"]: (c["status"], c.get("reason")) for c in before.get("conditions") or []}
    events = []
    for condition in after.get("conditions") or []:
        kind = condition["type"]
        if kind not in _HEALTHY:
            continue
        status, reason = old.get(kind, _UNSET[kind])
        new_cause = (
            kind == "Degraded" and condition["status"] == "True" and reason != condition["reason"]
        )
        if status != condition["status"] or new_cause:
            healthy = condition["status"] == _HEALTHY[kind]
            events.append(
                Event(
                    "Normal" if healthy else "Warning",
                    condition["reason"],
                    condition["message"] or f"{kind} is {condition['status']}",
                )
            )
    return events
