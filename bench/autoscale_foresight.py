"""Foresight schedules replayed in the REAL simulator, real pod start delays (60-180 s, seed 0).

    PYTHONPATH=operator:. .venv/bin/python bench/autoscale_foresight.py --configs 60:180,15:180

1. Plan: the `sym` model of bench/autoscale_bound.py (pods instant, a scale-up only on an empty
   queue) with a
   start cost S GPU-seconds per added replica and decision period P, replayed closed-loop with
   instant pods; its per-second replica counts are the plan n(t).
2. Realise the plan with the real start delays, deciding every second, knowing n(t) ahead:
   pods (ready + starting) = max n(u) over u in [t, t + lead], lead 180 s = the longest start
   delay, so every pod is ready in time without knowing the delays; a scale-down only while
   no pod is starting (the sim removes starting pods first, so it would cancel them).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, as a script
from bench._sim_policies import Autoscaler
from bench._sim_real_traces import shipped_trace
from bench._sim_run import simulate
from bench.autoscale_bound import CFG, HPA, Foresight, Model


class Recording(Foresight):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.decisions: dict[int, int] = {}

    def decide(self, now, cluster):
        n = super().decide(now, cluster)
        self.decisions[now] = n
        return n


def plan_of(trace, model, first, plan_k):
    cfg = replace(CFG, start_delay=(0.0, 0.0))
    pol = Recording(cfg, trace.arrivals, model, plan_k)
    r = simulate(trace, pol, cfg, first)
    n = np.empty(len(trace.arrivals), dtype=np.int64)
    cur = first
    for t in range(len(n)):
        cur = pol.decisions.get(t, cur)
        n[t] = cur
    return n, r


class Realise(Autoscaler):
    name = "realise"
    period = 1

    def __init__(self, config, plan, lead=180):
        super().__init__(config)
        self.plan, self.lead = plan, lead
        self.last_reason = "Plan"

    def decide(self, now, cluster):
        T = len(self.plan)
        if now >= T:
            return cluster.pod_count
        horizon = self.plan[now : min(T, now + self.lead + 1)]
        need = int(horizon.max())  # pods created now are ready within `lead` seconds
        if need > cluster.pod_count:
            return need
        if cluster.starting:
            return cluster.pod_count  # a scale-down would cancel the starting pods
        # keep ready pods needed again within the lead: recreating one costs about that much
        return need


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", type=float, default=25000.0)
    ap.add_argument("--R", type=int, default=20)
    ap.add_argument("--configs", default="60:180,15:180,60:0")
    ap.add_argument("--traces", default="azure-conv,azure-conv-24h")
    args = ap.parse_args()
    hour = shipped_trace("azure-conv")
    first = CFG.replicas_for(np.mean(hour.arrivals[:60]))
    for item in args.configs.split(","):
        period, start = (int(x) for x in item.split(":"))
        t0 = time.time()
        model = Model(
            hour.arrivals,
            0,
            "sym",
            step=args.step,
            bmax=4e6,
            R=args.R,
            period=period,
            start=float(start),
        )
        model.run()
        for name in args.traces.split(","):
            tr = shipped_trace(name)
            plan, r0 = plan_of(tr, model, first, [0] * 30)
            r = simulate(tr, Realise(CFG, plan), CFG, first)
            print(
                f"P={period:2d}s S={start:3d}s {name:15s} plan (instant pods) "
                f"{r0.gpu_hours:6.2f} GPU-h {r0.slo_minutes} SLO min | real delays: "
                f"{r.gpu_hours:6.2f} GPU-h, {r.slo_minutes} SLO min, worst p95 "
                f"{r.worst_p95_s:.2f} s, {r.pods_created} pods created (HPA "
                f"{HPA[name]} GPU-h)",
                flush=True,
            )
        print(f"  ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
