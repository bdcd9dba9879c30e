"""How fast one keep-alive client spreads over a fleet after a scale-up, under the worker's real
connection rule (embedfleet_worker.http.connections.ConnectionTable, one per pod).

The client is the openai SDK's: threads share one pool and take its first idle connection
(httpcore's order, oldest first), opening a new one only when none is idle; a connection leaves
the pool when its response says `Connection: close`. Each thread paces itself to its share of
`rate`; a request takes 20-40 ms. The Service places each new connection on a pod at random
(kube-proxy's iptables and nftables modes, the default) or in turn (IPVS round robin). One pod
serves for `warm` seconds, then all `pods` are Ready at t = 0. A run fails when, over the
`window` seconds after t = 0, some pod served less than 60% of an even share: the acceptance
test of the autoscaling end-to-end test, so the failure rate is that test's flake rate.

    PYTHONPATH=worker .venv/bin/python bench/connection_sim.py
"""

# ruff: noqa: E402  (sys.path is set before the imports: see below)
from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py: left first on sys.path (as it is for a script), it would shadow the
# standard library's `http` for every import (torch, openai, aiohttp). The repo root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import itertools
import random
from dataclasses import dataclass

from embedfleet_worker.http.connections import ConnectionLifetime, ConnectionTable


@dataclass(frozen=True)
class Scenario:
    pods: int
    threads: int
    rate: float
    window: float = 30.0
    warm: float = 10.0


@dataclass
class _Pooled:
    key: int
    pod: int
    busy_until: float = -1e9


def run(scenario: Scenario, rule: ConnectionLifetime, placement: str, seed: int) -> float:
    """The least-served pod's share of an even share over the window."""
    rng = random.Random(seed)
    tables = [
        ConnectionTable(rule, rng=random.Random(seed * 1000 + p)) for p in range(scenario.pods)
    ]
    keys, turn = itertools.count(), itertools.count(1)
    interval = scenario.threads / scenario.rate
    sends = sorted(
        start + k * interval - scenario.warm
        for start in (rng.uniform(0, interval) for _ in range(scenario.threads))
        for k in range(int((scenario.window + scenario.warm) / interval) + 1)
    )
    pool: list[_Pooled] = []
    served = [0] * scenario.pods
    for now in sends:
        if now >= scenario.window:
            break
        connection = next((c for c in pool if c.busy_until <= now), None)
        if connection is None:
            ready = 1 if now < 0 else scenario.pods
            pod = next(turn) % ready if placement == "round-robin" else rng.randrange(ready)
            connection = _Pooled(next(keys), pod)
            tables[pod].opened(connection.key, now)
            pool.append(connection)
        done = now + rng.uniform(0.02, 0.04)
        connection.busy_until = done
        if now >= 0:
            served[connection.pod] += 1
        if tables[connection.pod].closing(connection.key, done):
            tables[connection.pod].closed(connection.key)
            pool.remove(connection)
    return min(served) / (sum(served) / scenario.pods)


def failure_rate(scenario: Scenario, rule: ConnectionLifetime, placement: str, runs: int) -> float:
    return sum(run(scenario, rule, placement, seed) < 0.6 for seed in range(runs)) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    scenarios = [
        Scenario(pods=4, threads=8, rate=40),  # the autoscaling end-to-end test
        Scenario(pods=3, threads=8, rate=40),  # make demo
        Scenario(pods=4, threads=8, rate=12),
        Scenario(pods=4, threads=64, rate=400),
    ]
    rules = {
        "off": ConnectionLifetime(0),
        "age 5 s": ConnectionLifetime(5),
        "age 30 s": ConnectionLifetime(30),
        "4 requests": ConnectionLifetime(0, 4),
        "age 5 s, 8 req": ConnectionLifetime(5, 8),
        "age 5 s, 4 req": ConnectionLifetime(5, 4),  # the default
        "every request": ConnectionLifetime(0, 1),
    }
    print("failure rate: some pod served < 60% of an even share in the 30 s after all were Ready")
    print(f"{'pods/threads/rps':>16} {'placement':>11} " + " ".join(f"{r:>14}" for r in rules))
    for s in scenarios:
        for placement in ("random", "round-robin"):
            rates = [failure_rate(s, rule, placement, args.runs) for rule in rules.values()]
            print(f"{f'{s.pods}/{s.threads}/{s.rate:g}':>16} {placement:>11} "
                  + " ".join(f"{r:14.1%}" for r in rates))  # fmt: skip


if __name__ == "__main__":
    main()
