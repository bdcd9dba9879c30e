"""The engine's scheduler: the admission queue, which inputs run next, each request's progress,
and dropping requests whose callers have gone. Pure: no torch, no threads, and no clock of its
own (`now` is passed in). The engine calls it under its lock; `batching.plan_batch` decides
each batch's contents."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from embedfleet_worker.engine.batching import QueuedRequest, is_interactive, plan_batch
from embedfleet_worker.engine.errors import EngineOverloadedError


@dataclass(eq=False)
class ScheduledRequest:
    """One request's place in the queue: its inputs' token counts and how far it has got."""

    request_id: int
    lengths: list[int]  # tokens per input, in input order
    enqueued_at: float
    next_index: int = 0  # inputs before it are in a batch already
    started: bool = False  # its first input has been taken
    abandoned: bool = False  # cancelled by the caller or failed: drop what is left

    @property
    def pending_tokens(self) -> list[int]:
        return self.lengths[self.next_index :]

    def cancel(self) -> None:
        """The caller has gone: the rest of this request is dropped before it runs."""
        self.abandoned = True


R = TypeVar("R", bound=ScheduledRequest)


@dataclass(frozen=True)
class SchedulerLimits:
    max_batch_tokens: int
    max_batch_size: int
    max_queue_tokens: int  # admission bound; beyond it requests are refused (HTTP 429)
    # Requests with at most this many tokens left (single queries) jump ahead, and while one
    # waits bulk inputs fill its batch only up to interactive_batch_tokens (latency).
    interactive_tokens: int
    interactive_batch_tokens: int


@dataclass
class Taken(Generic[R]):
    """A batch's inputs as (request, input index), and the queue waits of the requests whose
    first input it starts."""

    inputs: list[tuple[R, int]] = field(default_factory=list)
    queue_waits: list[float] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(request.lengths[index] for request, index in self.inputs)


class Scheduler(Generic[R]):
    def __init__(self, limits: SchedulerLimits) -> None:
        self.limits = limits
        self.queue: list[R] = []
        self.queued_tokens = 0

    @property
    def depth(self) -> tuple[int, int]:
        """(tokens, requests) waiting."""
        return self.queued_tokens, len(self.queue)

    def admit(self, request: R) -> None:
        tokens = sum(request.pending_tokens)
        # An empty queue always admits, so one huge request can still run.
        if self.queue and self.queued_tokens + tokens > self.limits.max_queue_tokens:
            raise EngineOverloadedError(
                f"the queue holds {self.queued_tokens} tokens; retry shortly",
                retry_after_seconds=1.0,
            )
        self.queue.append(request)
        self.queued_tokens += tokens

    def is_interactive(self, request: R) -> bool:
        return is_interactive(request.pending_tokens, self.limits.interactive_tokens)

    def has_interactive(self) -> bool:
        return any(self.is_interactive(r) for r in self.queue if not r.abandoned)

    def drop_abandoned(self) -> bool:
        """Removes abandoned requests; True if any was queued."""
        kept = [r for r in self.queue if not r.abandoned]
        if len(kept) == len(self.queue):
            return False
        for request in self.queue:
            if request.abandoned:
                self.queued_tokens -= sum(request.pending_tokens)
        self.queue = kept
        return True

    def take(self, *, interactive_only: bool, now: float) -> Taken[R]:
        """Plans the next batch (only from interactive requests if asked) and takes its inputs."""
        self.drop_abandoned()
        candidates = (
            [r for r in self.queue if self.is_interactive(r)] if interactive_only else self.queue
        )
        plan = plan_batch(
            [QueuedRequest(r.request_id, r.pending_tokens) for r in candidates],
            max_batch_tokens=self.limits.max_batch_tokens,
            max_batch_size=self.limits.max_batch_size,
            interactive_tokens=self.limits.interactive_tokens,
            interactive_batch_tokens=self.limits.interactive_batch_tokens,
        )
        taken: Taken[R] = Taken()
        for request in self.queue:
            count = plan.take.get(request.request_id, 0)
            if count and not request.started:
                request.started = True
                taken.queue_waits.append(now - request.enqueued_at)
            for _ in range(count):
                taken.inputs.append((request, request.next_index))
                request.next_index += 1
        self.queued_tokens -= plan.num_tokens
        self.queue = [r for r in self.queue if r.next_index < len(r.lengths)]
        return taken
