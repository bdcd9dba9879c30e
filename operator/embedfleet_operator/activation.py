"""The activator's rules, without I/O: which requests it may hold while a fleet is at zero (at
most `max_held` at once, each for at most `hold_seconds`, the service's startup budget), what a
request it cannot hold is told (503 with Retry-After, in the OpenAI error shape), and which
headers pass through it. activator.py runs these over HTTP; the operator learns of demand from
its /demand endpoint and scales the fleet from zero."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

# Hop-by-hop headers (RFC 9110 7.6.1) and those the activator recomputes: never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "content-length",
    }
)  # fmt: skip


@dataclass(frozen=True)
class HoldLimits:
    max_held: int  # requests held at once; one more is refused
    hold_seconds: float  # how long one request may wait for a worker
    # A worker's typical start: a refused client is told to wait what is left of it. The
    # operator sends its measured start with each /demand poll (`with_measured_start`).
    retry_after_seconds: int


@dataclass(frozen=True)
class Admission:
    held: bool
    status: int = 200
    reason: str = ""


def admit(held_now: int, limits: HoldLimits) -> Admission:
    """Whether one more request may wait for a worker."""
    if held_now >= limits.max_held:
        return Admission(False, 503, "queue_full")
    return Admission(True)


def waited_too_long(waited: float, limits: HoldLimits) -> bool:
    return waited >= limits.hold_seconds


def retry_after(limits: HoldLimits, started_for: float | None) -> int:
    """Seconds a refused client should wait: what is left of a typical start, at least 1."""
    if started_for is None:
        return limits.retry_after_seconds
    return max(1, math.ceil(limits.retry_after_seconds - started_for))


def with_measured_start(limits: HoldLimits, start: str | None) -> HoldLimits:
    """The limits with the operator's measured worker start (a /demand poll's `start`, in
    seconds) as the typical start, at most the hold bound; unchanged when it says nothing
    usable. The operator learns it from the pods' own timings, so the activator needs no
    restart (nor any API access) to follow it."""
    try:
        seconds = float(start) if start is not None else math.nan
    except ValueError:
        return limits
    if not math.isfinite(seconds) or seconds <= 0:
        return limits
    typical = max(1, math.ceil(min(seconds, limits.hold_seconds)))
    return replace(limits, retry_after_seconds=typical)


_MESSAGES = {
    "queue_full": "The service is starting from zero replicas and already holds as many "
    "requests as it may; retry after the time in Retry-After.",
    "timeout": "The service is starting from zero replicas and no worker became ready within "
    "its startup budget; retry after the time in Retry-After.",
    "too_large": "The request body is larger than the service accepts.",
}


def error_body(reason: str) -> bytes:
    """An OpenAI-shaped error, as the workers answer theirs."""
    kind = "invalid_request_error" if reason == "too_large" else "service_unavailable"
    error = {"message": _MESSAGES[reason], "type": kind, "param": None, "code": reason}
    return json.dumps({"error": error}).encode()


# A worker's 503 codes for a request it did not run: it is still loading its model, or it is
# draining. Embedding and rerank requests change nothing, so one held here is sent again.
_NOT_SERVING_CODES = frozenset({"engine_unavailable", "draining"})


def worker_not_serving(status: int, body: bytes) -> bool:
    """Whether a worker's answer says it could not take the request yet (loading) or any more
    (draining): the activator keeps holding it, as when no worker answers at all. While a
    fleet wakes, the workers' Service may still list a worker that is going away."""
    if status != 503:
        return False
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("code") in _NOT_SERVING_CODES


def forwarded_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The end-to-end headers of a request or answer (hop-by-hop ones dropped)."""
    return [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]


def demand_answer(held: int, activations: int) -> Mapping[str, int]:
    """What /demand tells the operator: requests waiting now, and activations so far."""
    return {"held": held, "activations": activations}
