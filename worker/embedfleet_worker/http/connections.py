"""How long a client connection lives: the rule that spreads keep-alive clients over a fleet.

A Service balances connections, not requests, so a keep-alive client (the openai SDK's pool)
stays on the pods that existed when it connected. Each worker therefore closes a connection
*between* requests, by answering with `Connection: close`, once the connection is older than
its bound; the client reconnects through the Service and lands wherever kube-proxy sends it.

Two bounds, whichever comes first:
- age: at most `max_age / n` seconds, n being the API connections this worker holds now (never
  below `floor_fraction * max_age`). kube-proxy places connections at random, so a worker that
  drew more than its share recycles them faster than the others and the fleet converges;
- requests: at most `max_requests` on one connection. A lightly loaded pooled client (the
  openai SDK's) sends nearly all its requests over its first idle connection, one at a time,
  so requests move between pods only as often as that one connection is renewed. Past
  `requests_scale_from` client connections the bound grows in proportion: a worker holding
  many connections gets each client's requests over many of them, and the age bound renews
  them; a reconnect every few requests cost such a worker a fifth of its event loop (128
  concurrent single queries; see BENCHMARKS.md).
bench/connection_sim.py runs this rule against the SDK's pool model and kube-proxy's random
placement. Each connection's bounds are drawn once, up to `jitter` below the configured
values, so a fleet's clients do not reconnect in lockstep.

Pure: no sockets, no clock; `now` and the random draw come from the caller."""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConnectionLifetime:
    max_age_seconds: float  # 0: no age bound
    max_requests: int = 0  # 0: no request bound
    jitter: float = 0.2
    floor_fraction: float = 0.2
    requests_scale_from: int = 8  # client connections

    def __post_init__(self) -> None:
        if self.max_age_seconds < 0 or self.max_requests < 0:
            raise ValueError("max_age_seconds and max_requests must be >= 0")
        if not 0 <= self.jitter < 1 or not 0 < self.floor_fraction <= 1:
            raise ValueError("jitter must be in [0, 1) and floor_fraction in (0, 1]")
        if self.requests_scale_from < 1:
            raise ValueError("requests_scale_from must be >= 1")

    def share(self, draw: float) -> float:
        """One connection's own part of the bounds for `draw` in [0, 1): (1 - jitter) to 1."""
        return 1.0 - self.jitter * draw

    def age_limit(self, share: float, open_connections: int) -> float:
        """The age at which a connection closes while the worker holds `open_connections`
        client connections (this one included)."""
        budget = self.max_age_seconds * share
        return max(self.floor_fraction * budget, budget / max(1, open_connections))

    def request_limit(self, share: float, open_connections: int) -> float:
        """The requests after which a connection closes while the worker holds
        `open_connections` client connections."""
        scale = max(1.0, open_connections / self.requests_scale_from)
        return max(1.0, self.max_requests * share * scale)

    def expired(self, share: float, age: float, requests: int, open_connections: int) -> bool:
        """Whether a connection of this age that has now carried `requests` requests closes."""
        if self.max_requests and requests >= self.request_limit(share, open_connections):
            return True
        return self.max_age_seconds > 0 and age >= self.age_limit(share, open_connections)


@dataclass
class _Connection:
    opened_at: float
    share: float
    requests: int = 0
    serves_api: bool = False


@dataclass
class ConnectionTable:
    """The worker's open connections, fed by the HTTP protocol (opened/closed) and the API
    guard (each response asks `closing`). Keys are whatever identifies a connection while it
    is open (the peer address)."""

    lifetime: ConnectionLifetime
    rng: random.Random = field(default_factory=random.Random)
    # API processes sharing the port, each with a table: the kernel spreads accepted
    # connections over them, so the worker holds about this many times this table's count.
    processes: int = 1
    opened_total: int = 0
    recycled_total: int = 0
    _open: dict[Hashable, _Connection] = field(default_factory=dict)
    _api_connections: int = 0

    def opened(self, key: Hashable, now: float) -> None:
        self.opened_total += 1
        self._open[key] = _Connection(now, self.lifetime.share(self.rng.random()))

    def closed(self, key: Hashable) -> None:
        connection = self._open.pop(key, None)
        if connection is not None:
            self._serves_api(connection, False)

    @property
    def api_connections(self) -> int:
        """Open connections that carried an API request: probes and scrapes are not clients."""
        return self._api_connections

    def closing(self, key: Hashable, now: float, *, draining: bool = False) -> bool:
        """Called as an API response starts: True means answer with `Connection: close`.
        A connection the table never saw (no protocol hook, e.g. an in-process test client)
        is left alone."""
        connection = self._open.get(key)
        if connection is None:
            return False
        self._serves_api(connection, True)
        connection.requests += 1
        close = draining or self.lifetime.expired(
            connection.share,
            now - connection.opened_at,
            connection.requests,
            self.api_connections * self.processes,
        )
        if close:
            self.recycled_total += 1
            self._serves_api(connection, False)  # leaving: no longer counted as a client
        return close

    def _serves_api(self, connection: _Connection, serves: bool) -> None:
        if connection.serves_api != serves:
            connection.serves_api = serves
            self._api_connections += 1 if serves else -1
