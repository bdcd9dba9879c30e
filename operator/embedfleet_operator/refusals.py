"""When the apiserver refuses the workers' objects: which refusals are the spec's (stop and wait
for the next spec change) and which are a moment's (retry soon). Pure: the caller passes the
HTTP status, the spec's generation and `now` (a monotonic clock).

A conflict, throttling or a gateway or apiserver that is not ready (409, 429, 502-504) is a
moment's: retried like an outage. Another 4xx is an answer about this spec: retrying it only
hammers the apiserver. A 500 usually is a moment's trouble, but one that repeats for the same
generation is not (an admission webhook that is down, a spec the apiserver cannot decode):
after REPEATS_BEFORE_PERMANENT of them the generation counts as refused too, and is tried
again after a backoff that doubles from FIRST_RETRY_SECONDS. A refused generation is tried
again at the latest every PERMANENT_RETRY_SECONDS, as Kubernetes' own controllers cap their
backoff, so a fix outside the spec (a quota raised, a webhook back) is picked up without an
edit; a new generation is applied at once."""

from __future__ import annotations

import json
from dataclasses import dataclass

from embedfleet_operator.status import Problem

REPEATS_BEFORE_PERMANENT = 3
FIRST_RETRY_SECONDS = 15.0  # a 500 that repeated: tried again after this, then doubling
PERMANENT_RETRY_SECONDS = 600.0
# Answers that say "not now" rather than "no": a conflict with a concurrent write, throttling,
# a gateway or an apiserver that is not ready. Always retried, like an outage; a 500 is too,
# until it repeats for one generation (api_outage.py retries these and 500).
MOMENTARY_STATUSES = frozenset({409, 429, 502, 503, 504})


@dataclass(frozen=True)
class Refusal:
    generation: int
    status: int
    message: str
    count: int  # refusals of this generation in a row
    permanent: bool
    retry_at: float  # when a permanent refusal is tried again

    @property
    def problem(self) -> Problem:
        reason = "InvalidSpec" if self.status in (400, 422) else "ApplyRefused"
        return Problem(reason, self.message)


def refused(
    previous: Refusal | None, *, generation: int, status: int, message: str, now: float
) -> Refusal | None:
    """The record after the apiserver refused `generation` with `status`; None when the
    refusal is a moment's (a conflict, throttling), which is always retried."""
    if status in MOMENTARY_STATUSES:
        return None
    same = previous is not None and previous.generation == generation
    count = previous.count + 1 if same and previous is not None else 1
    if status != 500:
        return Refusal(generation, status, message, count, True, now + PERMANENT_RETRY_SECONDS)
    repeats = count - REPEATS_BEFORE_PERMANENT
    delay = min(PERMANENT_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(0, repeats))
    return Refusal(generation, status, message, count, repeats >= 0, now + delay)


def should_apply(refusal: Refusal | None, *, generation: int, now: float) -> bool:
    """Whether to send the workers' objects now, given the last refusal (if any)."""
    if refusal is None or refusal.generation != generation or not refusal.permanent:
        return True
    return now >= refusal.retry_at


def refusal_message(status: int, reason: str | None, body: str | bytes | None) -> str:
    """The apiserver's own words (its Status message), not only "Internal Server Error"."""
    said = ""
    try:
        parsed = json.loads(body or "")
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        said = str(parsed.get("message") or "")
    answer = f"{status} {reason}" if reason else str(status)
    return f"the apiserver refused the workers' objects ({answer})" + (f": {said}" if said else "")
