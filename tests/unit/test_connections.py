"""The connection-lifetime rule (connections.py): when a worker answers `Connection: close`."""

from __future__ import annotations

import random

import pytest

from embedfleet_worker.http.connections import ConnectionLifetime, ConnectionTable

RULE = ConnectionLifetime(max_age_seconds=10.0, max_requests=8, jitter=0.2, floor_fraction=0.2)
AGE_ONLY = ConnectionLifetime(max_age_seconds=10.0)


@pytest.mark.parametrize(
    ("case", "rule", "share", "age", "requests", "open_connections", "expired"),
    [
        ("young connection, alone", RULE, 1.0, 9.9, 1, 1, False),
        ("reached its age, alone", RULE, 1.0, 10.0, 1, 1, True),
        ("two connections halve the age bound", RULE, 1.0, 5.0, 1, 2, True),
        ("two connections, just under half", RULE, 1.0, 4.9, 1, 2, False),
        ("many connections: the floor holds", RULE, 1.0, 1.9, 1, 50, False),
        ("many connections: past the floor", RULE, 1.0, 2.0, 1, 50, True),
        ("no count yet counts as one", RULE, 1.0, 9.0, 1, 0, False),
        ("a smaller drawn share closes sooner", RULE, 0.8, 8.0, 1, 1, True),
        ("request bound reached", RULE, 1.0, 0.1, 8, 1, True),
        ("request bound not yet reached", RULE, 1.0, 0.1, 7, 1, False),
        ("request bound jittered down", RULE, 0.8, 0.1, 7, 1, True),  # 8 * 0.8 = 6.4
        ("up to 8 connections, the bound as set", RULE, 1.0, 0.1, 8, 8, True),
        ("16 connections double the request bound", RULE, 1.0, 0.1, 15, 16, False),
        ("16 connections: doubled bound reached", RULE, 1.0, 0.1, 16, 16, True),
        ("no request bound", AGE_ONLY, 1.0, 0.1, 10_000, 1, False),
        ("age bound off, requests on", ConnectionLifetime(0, 3), 1.0, 1e9, 2, 1, False),
        ("at least one request always", ConnectionLifetime(0, 1), 0.8, 0.0, 1, 1, True),
        ("unbounded never expires", ConnectionLifetime(0), 1.0, 1e9, 10**6, 1000, False),
    ],
)
def test_expiry(
    case: str,
    rule: ConnectionLifetime,
    share: float,
    age: float,
    requests: int,
    open_connections: int,
    expired: bool,
) -> None:
    assert rule.expired(share, age, requests, open_connections) is expired, case


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999])
def test_each_connection_draws_its_share_below_the_bounds(draw: float) -> None:
    share = RULE.share(draw)
    assert 0.8 < share <= 1.0
    assert share == pytest.approx(1 - 0.2 * draw)


@pytest.mark.parametrize(
    "kwargs", [{"max_age_seconds": -1}, {"max_age_seconds": 1, "max_requests": -1},
               {"max_age_seconds": 1, "jitter": 1.0}, {"max_age_seconds": 1, "floor_fraction": 0},
               {"max_age_seconds": 1, "requests_scale_from": 0}]
)  # fmt: skip
def test_invalid_rules_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ConnectionLifetime(**kwargs)  # type: ignore[arg-type]


def table(max_age: float = 10.0, max_requests: int = 0) -> ConnectionTable:
    rule = ConnectionLifetime(max_age, max_requests, jitter=0.0)
    return ConnectionTable(rule, rng=random.Random(0))


def test_a_connection_closes_once_its_age_is_reached() -> None:
    t = table()
    t.opened("a", now=100.0)
    assert not t.closing("a", now=105.0)
    assert t.closing("a", now=110.0)
    assert t.recycled_total == 1
    assert t.api_connections == 0  # leaving: no longer counted as a client
    t.closed("a")
    assert t.opened_total == 1


def test_the_bound_divides_by_client_connections_only() -> None:
    t = table()
    for key in ("a", "b", "probe"):
        t.opened(key, now=0.0)
    assert not t.closing("a", now=1.0)  # "a" serves the API; "b" and the probe do not yet
    assert t.api_connections == 1
    assert not t.closing("b", now=4.0)  # two client connections: bound 5 s
    assert t.closing("a", now=5.0)
    assert t.api_connections == 1


def test_draining_closes_every_connection_at_its_next_response() -> None:
    t = table()
    t.opened("a", now=0.0)
    assert t.closing("a", now=0.1, draining=True)


def test_unknown_connections_and_an_unbounded_rule_are_left_open() -> None:
    t = table()
    assert not t.closing("never-opened", now=1e9)
    unbounded = table(max_age=0)
    unbounded.opened("a", now=0.0)
    assert not unbounded.closing("a", now=1e9)
    assert unbounded.recycled_total == 0


def test_closed_connections_leave_the_count() -> None:
    t = table()
    t.opened("a", now=0.0)
    t.opened("b", now=0.0)
    t.closing("a", now=0.1)
    t.closing("b", now=0.1)
    assert t.api_connections == 2
    t.closed("a")
    t.closed("a")  # a second report is harmless
    assert t.api_connections == 1


def test_the_request_bound_counts_this_connections_responses() -> None:
    t = table(max_age=0, max_requests=3)
    t.opened("a", now=0.0)
    t.opened("b", now=0.0)
    assert [t.closing("a", now=0.0) for _ in range(2)] == [False, False]
    assert not t.closing("b", now=0.0)
    assert t.closing("a", now=0.0)  # its third response
