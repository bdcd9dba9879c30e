"""The simulated fleet of bench/autoscale_sim.py: pods that take a random while to start, one
FIFO queue per ready replica, and the latency every token sees, advanced one second at a time.

The model is a fluid one. Each ready replica serves up to `capacity` tokens per second from its
own FIFO queue; the second's arrivals are split evenly over the ready replicas (a Service's
random load balancing, on average); a token that joins a queue behind q tokens waits q/capacity
and then takes the service time (one batch step plus its request's own compute). Queued work
is never moved between replicas, except when a replica is removed: its queue is spread over the
others, so no request is lost. With no ready replica at all, arrivals wait in a pending buffer
(an activator or a client retrying) and their wait counts in their latency.

A new pod holds a GPU from the moment it is created and takes traffic after a start delay drawn
uniformly from `start_delay` with the run's own seeded generator: the k-th pod created in a run
gets the k-th delay, so every policy meets the same delays. A scale-down removes starting pods
first (the newest), then the replicas that became ready last, at once.

Bookkeeping is cheap on purpose: while no replica has a queue and the even share fits in one
replica, a second costs a few float additions whatever the fleet size. Per-replica counters are
kept implicitly: `share` is what every ready replica has been handed by the split so far, and a
replica's cumulative served tokens are `share - base - queue` (its base moves when it receives a
removed replica's queue), read only when a policy samples the fleet."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class SimConfig:
    capacity: float = 50_000.0  # tokens/s one replica serves flat out
    request_tokens: float = 500.0  # mean request size, for requests/s and queue lengths
    batch_seconds: float = 0.05  # fixed cost of the batch step a request rides in
    slo_seconds: float = 2.0  # per-minute p95 latency above this: an SLO-violation minute
    start_delay: tuple[float, float] = (60.0, 180.0)  # pod created -> ready, uniform
    min_replicas: int = 1
    max_replicas: int = 16
    target_percent: float = 65.0  # every autoscaler's utilisation target
    seed: int = 0

    @property
    def service_seconds(self) -> float:
        return self.batch_seconds + self.request_tokens / self.capacity

    def replicas_for(self, tokens_per_s: float) -> int:
        """Replicas that serve this rate at the target utilisation (at least minReplicas)."""
        need = math.ceil(tokens_per_s / (self.capacity * self.target_percent / 100) - 1e-9)
        return max(self.min_replicas, need)


class Cluster:
    """Pods, queues and this minute's latency samples. Policies read the public fields."""

    def __init__(self, config: SimConfig, initial_ready: int) -> None:
        self.capacity = config.capacity
        self.service = config.service_seconds
        self._rng = random.Random(config.seed)
        self._delay = config.start_delay
        self._next_id = 0
        # Ready replicas as parallel lists, in the order they became ready.
        self.ids: list[int] = []
        self.ready_at: list[int] = []  # the first second the replica took traffic
        self.queue: list[float] = []
        self.base: list[float] = []
        self.share = 0.0  # tokens the even split has handed every ready replica so far
        self.backlog = 0.0  # sum of queue
        self.starting: list[tuple[float, int]] = []  # (ready time, pod id), in creation order
        self.next_ready = math.inf
        self.pending: list[tuple[int, float]] = []  # (arrival second, tokens): nobody ready
        self.pending_tokens = 0.0
        self.pod_count = 0  # pods holding a GPU: starting and ready
        self.pods_created = 0
        self.created: dict[int, int] = {}  # starting pod -> the second it was created
        # Each pod's start as the operator measures it (starts.py): created to ready, whole
        # seconds as Kubernetes timestamps have them, in the order the pods became ready.
        self.starts: list[float] = []
        self.last_served = 0.0  # tokens served fleet-wide in the last second
        # This minute's traffic: tokens that saw only the service time, then (latency, tokens).
        self.fast_tokens = 0.0
        self.latencies: list[float] = []
        self.weights: list[float] = []
        for _ in range(initial_ready):
            self._add_ready(self._new_id(), -1_000_000)
            self.pod_count += 1

    # ----------------------------------------------------------------------- pods
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _add_ready(self, pod: int, second: int) -> None:
        self.ids.append(pod)
        self.ready_at.append(second)
        self.queue.append(0.0)
        self.base.append(self.share)

    @property
    def ready(self) -> int:
        return len(self.ids)

    def served(self, index: int) -> float:
        """Tokens the index-th ready replica has served since it became ready."""
        return self.share - self.base[index] - self.queue[index]

    def _promote(self, second: int) -> None:
        still: list[tuple[float, int]] = []
        for ready_time, pod in self.starting:
            if ready_time <= second:
                self._add_ready(pod, second)
                self.starts.append(float(second - self.created.pop(pod)))
            else:
                still.append((ready_time, pod))
        self.starting = still
        self.next_ready = min((r for r, _ in still), default=math.inf)
        if self.pending:
            self._hand_over(second)

    def _hand_over(self, second: int) -> None:
        """The pending buffer joins the queues of the replicas now ready, oldest first."""
        n = len(self.queue)
        for arrived, tokens in self.pending:
            part = tokens / n
            for i in range(n):
                wait = second - arrived + (self.queue[i] + part / 2) / self.capacity
                self.latencies.append(wait + self.service)
                self.weights.append(part)
                self.queue[i] += part
                self.base[i] -= part
        self.backlog += self.pending_tokens
        self.pending.clear()
        self.pending_tokens = 0.0

    def scale_to(self, now: int, replicas: int) -> None:
        while self.pod_count < replicas:
            delay = self._rng.uniform(*self._delay)
            pod = self._new_id()
            self.starting.append((now + delay, pod))
            self.created[pod] = now
            self.pod_count += 1
            self.pods_created += 1
        while self.pod_count > replicas and self.starting:
            self.created.pop(self.starting.pop()[1], None)
            self.pod_count -= 1
        orphaned = 0.0
        while self.pod_count > replicas:
            self.ids.pop()
            self.ready_at.pop()
            self.base.pop()
            orphaned += self.queue.pop()
            self.pod_count -= 1
        if orphaned > 0.0:
            if self.queue:
                part = orphaned / len(self.queue)
                for i in range(len(self.queue)):
                    self.queue[i] += part
                    self.base[i] -= part
            else:
                self.pending.append((now, orphaned))
                self.pending_tokens += orphaned
                self.backlog -= orphaned
        self.next_ready = min((r for r, _ in self.starting), default=math.inf)

    # ----------------------------------------------------------------------- time
    def step(self, second: int, arriving: float) -> None:
        """Advance over [second, second + 1) with `arriving` tokens."""
        if second >= self.next_ready:
            self._promote(second)
        n = len(self.queue)
        if n == 0:
            if arriving > 0.0:
                self.pending.append((second, arriving))
                self.pending_tokens += arriving
            self.last_served = 0.0
            return
        capacity = self.capacity
        each = arriving / n
        self.share += each
        if self.backlog == 0.0 and each <= capacity:
            self.fast_tokens += arriving
            self.last_served = arriving
            return
        queue, latencies, weights = self.queue, self.latencies, self.weights
        half, service = 0.5 / capacity, self.service
        total = 0.0
        for i in range(n):
            before = queue[i]
            after = before + each - capacity
            if after <= 0.0:
                after = 0.0
            queue[i] = after
            total += after
            if each > 0.0:
                # The second's arrivals join behind a queue going from `before` to `after`.
                latencies.append((before + after) * half + service)
                weights.append(each)
        self.last_served = arriving + self.backlog - total
        self.backlog = total

    def close_minute(self) -> float | None:
        """The traffic-weighted p95 latency of the minute just ended (None: no traffic)."""
        fast, latencies, weights = self.fast_tokens, self.latencies, self.weights
        total = fast + sum(weights)
        p95: float | None = None
        if total > 0.0:
            p95 = self.service
            threshold = 0.95 * total
            if fast < threshold:
                seen = fast
                for latency, weight in sorted(zip(latencies, weights, strict=True)):
                    seen += weight
                    p95 = latency
                    if seen >= threshold:
                        break
        self.fast_tokens = 0.0
        self.latencies = []
        self.weights = []
        return p95
