"""Minute 0 of azure-conv (and of azure-conv-24h) is an SLO-violation minute for ANY policy as
autoscale_sim.run_all starts it: 3 ready replicas (replicas_for(first-minute mean)); the first
decision is at now >= 1 and a pod takes >= 60 s, so no replica can be added before second 61.
The ready count over seconds 0..59 can therefore only fall; a scale-down spreads the removed
queues evenly, so the queues stay equal and the fleet is exactly the pooled queue; fewer
replicas give a larger backlog and every second's latency is >= the 3-replica one. So p95 of
minute 0 >= p95 with 3 replicas throughout, computed here with the real Cluster.

    PYTHONPATH=operator:. .venv/bin/python bench/autoscale_minute0.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, as a script
from bench._sim_cluster import Cluster, SimConfig
from bench._sim_real_traces import shipped_trace

cfg = SimConfig()
for name in ("azure-conv", "azure-conv-24h"):
    a = shipped_trace(name).arrivals
    init = cfg.replicas_for(sum(a[:60]) / 60)
    for n in range(1, init + 2):
        c = Cluster(cfg, n)
        for s in range(60):
            c.step(s, a[s])
        print(
            f"{name}: runner's initial fleet {init}; {n} replicas all minute 0 -> p95 "
            f"{c.close_minute():.3f} s (SLO {cfg.slo_seconds} s)"
        )
