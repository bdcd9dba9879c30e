"""GPU-hours any autoscaling policy needs for at most K SLO-violation minutes, in the fleet/queue/
latency model of bench/_sim_cluster.py: lower bounds (dynamic programme over a relaxation) and a
foresight schedule replayed through the real simulator (an upper bound that is achievable).

    PYTHONPATH=operator:. .venv/bin/python bench/autoscale_bound.py --modes strict --skip-construct

The sim, as used here (bench/_sim_cluster.py): each ready replica has its own FIFO fluid queue;
a second's arrivals A are split evenly (e = A/n each); a replica's queue goes b -> a =
max(0, b + e - c) and that second's tokens on it get latency (b + a)/(2c) + service, i.e. they
are "bad" (> slo) iff b + a > 2 (slo - service) c =: Q2 (194,000 tokens). A minute violates iff
its traffic-weighted p95 > slo, i.e. iff bad weight > 5% of its tokens. GPU-seconds = pods
(starting + ready) summed per second. Scale-up: new replicas start with an empty queue, old
queues stay put; scale-down removes the newest replicas and spreads their queues over the rest.

Models (state: violations left k, replicas of the last second p, backlog B, this minute's bad
budget left j; one action n in [1, 16] per second, or per `period` block):
  pooled  all replicas share the backlog, B' = max(0, B + A - n c); bad iff B + B' > n Q2,
          charged A. Exact for a fleet whose queues are equal (any scale-down keeps them equal;
          a scale-up keeps them equal only when B = 0). Not a proven bound for unequal queues.
  strict  same, but a bad second is charged A/n (one replica's share). A proven relaxation of
          the sim for ANY schedule: the pooled B never exceeds the sum of the sim's queues
          (it is work-conserving: sum max(0, x_i) >= max(0, sum x_i)), so a pooled-bad second
          has at least one bad replica, which carries A/n of the weight.
  sym     the achievable class: pooled, but n may rise only when B = 0 (queues then stay
          equal, so the pooled model IS the sim); grids round pessimistically.
Lower bounds round optimistically: arrivals in backlog steps via floor of the cumulative sum
(the stepped queue is never more than one step above the true one, so testing (B - step)+ is
optimistic), budgets rounded up, backlog clipped at the top. `start` = GPU-seconds charged per
replica added: 0 (pods ready instantly) or 60 (the sim's minimum start delay: a pod holds a GPU
for >= 60 s before it takes traffic; still a valid lower bound).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, as a script
from bench._sim_cluster import Cluster, SimConfig
from bench._sim_policies import Autoscaler
from bench._sim_real_traces import shipped_trace
from bench._sim_run import simulate

CFG = SimConfig()
CAP = CFG.capacity
Q2 = 2 * (CFG.slo_seconds - CFG.service_seconds) * CAP  # per replica: bad iff b + a > Q2
NMIN, NMAX = CFG.min_replicas, CFG.max_replicas
NN = NMAX - NMIN + 1
INF = np.float32(np.inf)
HPA = {"azure-conv": 5.9, "azure-conv-24h": 148.6}  # from autoscale_sim.py --check


class Model:
    def __init__(self, arr, K, mode, step, bmax, R, period=1, start=0.0, initial=None):
        assert mode in ("pooled", "strict", "sym")
        assert 60 % period == 0
        assert abs(CAP / step - round(CAP / step)) < 1e-9, "step must divide the capacity"
        self.arr = np.asarray(arr, dtype=np.float64)
        self.T = len(self.arr) // 60 * 60
        self.K, self.mode, self.step, self.R = K, mode, step, R
        self.period, self.start = period, np.float32(start)
        self.NB = math.ceil(bmax / step) + 1
        self.J = R + 2  # budget levels 0..R; R+1: the minute is declared violated
        self.per = round(CAP / step)
        self.minute_tokens = self.arr[: self.T].reshape(-1, 60).sum(axis=1)
        if mode == "sym":  # pessimistic: each second's arrivals rounded up
            self.a = np.ceil(self.arr / step - 1e-9).astype(np.int64)
        else:  # optimistic: floor of the cumulative sum
            cum = np.floor(np.cumsum(self.arr) / step + 1e-9)
            self.a = np.diff(np.concatenate([[0.0], cum])).astype(np.int64)
        self.up = np.arange(NN)[None, :] > np.arange(NN)[:, None]  # [p, n]: n > p
        self.checkpoints: list[np.ndarray] = []
        # The runner's initial fleet: `initial` ready replicas at t = 0, and no pod can be ready
        # before second 61 (created at the first decision, now = 1, after >= 60 s).
        self.initial = initial

    def unit(self, t):
        return 0.05 * self.minute_tokens[t // 60] / self.R

    def tables(self, t):
        A, a, unit = float(self.arr[t]), int(self.a[t]), self.unit(t)
        bi = np.arange(self.NB, dtype=np.int64)
        jj = np.arange(self.J)
        out = []
        for n in range(NMIN, NMAX + 1):
            after = np.maximum(0, bi + a - n * self.per)
            if self.mode == "sym":
                good = (bi + after) * self.step <= n * Q2
            else:
                good = (np.maximum(0, bi - 1) + np.maximum(0, after - 1)) * self.step <= n * Q2
            charge = A / n if self.mode == "strict" else A
            if self.mode == "sym":  # budget rounded down
                shift = math.ceil(charge / unit - 1e-9) if unit > 0 else 0
                ok = jj - shift >= 0
            else:  # rounded up
                shift = math.floor(charge / unit + 1e-9) if unit > 0 else 0
                ok = jj * unit >= charge * (1 - 1e-12)
            jmap = np.where(ok, jj - shift, 0)
            ok[self.R + 1], jmap[self.R + 1] = True, self.R + 1
            if self.mode == "sym":  # pessimistic: no state beyond the grid top
                good = good & (after <= self.NB - 1)
            out.append((np.minimum(self.NB - 1, after), good, jmap, ok, after <= self.NB - 1))
        return out

    def second(self, t, Vnext):
        """V_t from V_{t+1}; V[k, p, b, j], p = the replicas (index) used in second t."""
        Y = np.empty_like(Vnext)
        for i, (bidx, good, jmap, ok, inside) in enumerate(self.tables(t)):
            G = Vnext[:, i][:, bidx, :]
            bad = np.where(ok[None, None, :], G[:, :, jmap], INF)
            Y[:, i] = np.where(good[None, :, None], G, bad) + np.float32(i + NMIN)
            if self.mode == "sym":
                Y[:, i][:, ~inside, :] = INF
            if self.initial is not None and t <= 60 and i + NMIN > self.initial:
                Y[:, i] = INF
        if t % self.period:
            return Y  # no decision: the replica count of t is that of t + 1
        # Decision at t: come from p, use n. Down (n <= p) free; up costs start * (n - p).
        Z = Y + self.start * np.arange(NN, dtype=np.float32)[None, :, None, None]
        if self.mode == "sym":
            Z[:, :, 1:, :] = INF  # a scale-up only from an empty queue
        down = np.minimum.accumulate(Y, axis=1)  # [p] = min_{n <= p} Y_n
        sufZ = np.flip(np.minimum.accumulate(np.flip(Z, axis=1), axis=1), axis=1)
        upv = np.full_like(Y, INF)
        upv[:, :-1] = (
            sufZ[:, 1:] - self.start * np.arange(NN - 1, dtype=np.float32)[None, :, None, None]
        )
        V = np.minimum(down, upv)
        return V

    def reset(self, V):
        """Minute start: comply with a full budget, or spend a violation."""
        U = V[..., self.R].copy()
        U[1:] = np.minimum(U[1:], V[:-1, ..., self.R + 1])
        return np.broadcast_to(U[..., None], V.shape).copy()

    def run(self, T=None):
        """Backward over [0, T). Returns V_0 after the minute-0 reset: [k, p, b]."""
        T = self.T if T is None else T
        V = np.zeros((self.K + 1, NN, self.NB, self.J), dtype=np.float32)
        self.checkpoints = [None] * (T // 60)
        for t in range(T - 1, -1, -1):
            if t % 60 == 59:
                self.checkpoints[t // 60] = V
            V = self.second(t, V)
            if t % 60 == 0:
                V = self.reset(V)
        return V[..., 0]

    def minute(self, m):
        """[V used as V_{t+1} for t = 60m .. 60m+59] (recomputed from the checkpoint)."""
        V = self.checkpoints[m]
        nexts = [None] * 60
        for t in range(60 * m + 59, 60 * m - 1, -1):
            nexts[t - 60 * m] = V
            V = self.second(t, V)
        return nexts


def lb_value(V0, initial=None):
    """Empty queue at the start; the given initial fleet, or any (free: min over p).
    GPU-seconds per k."""
    if initial is not None:
        return V0[:, initial - NMIN, 0].astype(np.float64)
    return V0[:, :, 0].min(axis=1).astype(np.float64)


def lb_day(seg_first, seg_hour, seg_prefix, K, tiles):
    """Day = `tiles` hours + a prefix: each part from an empty queue and (but the first) a free
    fleet (both optimistic), the K violations spread over the parts at best."""
    best = np.full(K + 1, np.inf)
    best[0] = 0.0
    for s in [seg_first] + [seg_hour] * (tiles - 1) + [seg_prefix]:
        new = np.full(K + 1, np.inf)
        for used in range(K + 1):
            for k in range(K + 1 - used):
                new[used + k] = min(new[used + k], best[used] + s[k])
        best = new
    return float(best.min())


# ------------------------------------------------------------------ constructive schedule
class Foresight(Autoscaler):
    """Replays the sym model's optimum closed-loop in the real simulator: at each decision it
    reads the real cluster (backlog, replicas, this minute's bad weight so far) and picks the
    n minimising start*(n-p)+ + n + V_{t+1}(next state), n > p only with an empty queue. On the
    24 h trace second t uses the hour's tables at t mod hour; `plan[i]` violations allowed in
    hour-tile i."""

    name = "foresight"

    def __init__(self, config, arr, model: Model, plan):
        super().__init__(config)
        self.period = model.period
        self.arr, self.M, self.plan = np.asarray(arr), model, plan
        self.H = model.T
        self.k = 0
        self.cache_m, self.cache = -1, None
        self.violating = False
        self.last_reason = "Foresight"

    def decide(self, now: int, cluster: Cluster) -> int:
        M = self.M
        if now >= len(self.arr):
            return cluster.pod_count
        h = now % self.H
        if h == 0:
            tile = now // self.H
            self.k = self.plan[tile] if tile < len(self.plan) else 0
        m = h // 60
        if m != self.cache_m:
            self.cache_m, self.cache = m, M.minute(m)
        Vn = self.cache[h - 60 * m]
        B, p = cluster.backlog, cluster.pod_count
        A, unit = float(self.arr[now]), M.unit(h)
        options = []  # (k after, budget index or None for violated, flag)
        if now % 60 == 0:
            self.violating = False
            options.append((self.k, M.R, False))
            if self.k > 0:
                options.append((self.k - 1, M.R + 1, True))
        elif self.violating:
            options.append((self.k, M.R + 1, True))
        else:
            lat, w = np.asarray(cluster.latencies), np.asarray(cluster.weights)
            bad = float(w[lat > CFG.slo_seconds].sum()) if len(lat) else 0.0
            rem = 0.05 * M.minute_tokens[m] - bad
            options.append((self.k, max(0, min(M.R, math.floor(rem / unit + 1e-9))), False))
        best = (np.inf, p, None)
        for k, j, violating in options:
            for n in range(NMIN, NMAX + 1):
                if n > p and B > 0.0:
                    continue
                after = max(0.0, B + A - n * CAP)
                b2 = min(M.NB - 1, math.ceil(after / M.step - 1e-9))
                j2 = j
                if B + after > n * Q2 and j <= M.R:
                    j2 = j - math.ceil(A / unit - 1e-9) if unit > 0 else j
                    if j2 < 0:
                        continue
                val = float(Vn[k, n - NMIN, b2, j2]) + n + float(M.start) * max(0, n - p)
                if val < best[0]:
                    best = (val, n, (k, violating))
        if best[2] is None:  # nothing feasible in the tables: the most replicas allowed
            self.last_reason = "Fallback"
            return NMAX
        if now % 60 == 0:
            self.k, self.violating = best[2]
        return best[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", type=float, default=10000.0, help="backlog grid, tokens")
    ap.add_argument("--bmax", type=float, default=4.0e6, help="backlog grid top, tokens")
    ap.add_argument("--R", type=int, default=30, help="budget levels per minute")
    ap.add_argument("--K", type=int, default=5)
    ap.add_argument("--periods", default="1,15,60")
    ap.add_argument("--starts", default="0,60")
    ap.add_argument("--modes", default="strict,pooled")
    ap.add_argument("--skip-lb", action="store_true")
    ap.add_argument("--skip-construct", action="store_true")
    args = ap.parse_args()
    hour = np.asarray(shipped_trace("azure-conv").arrivals)
    day = np.asarray(shipped_trace("azure-conv-24h").arrivals)
    H = len(hour)
    tiles, rest = divmod(len(day), H)
    assert np.array_equal(day[: tiles * H], np.tile(hour, tiles))
    assert np.array_equal(day[tiles * H :], hour[:rest])
    print(
        f"hour = {H} s; day = {tiles} hours + {rest} s; step {args.step:g} tokens, "
        f"R {args.R}; HPA: {HPA}"
    )
    periods = [int(x) for x in args.periods.split(",")]
    starts = [float(x) for x in args.starts.split(",")]
    if not args.skip_lb:
        init = CFG.replicas_for(hour[:60].mean())
        print(
            f"\nLOWER BOUNDS (GPU-h; inf = infeasible) by model, decision period, start cost "
            f"per added replica; 'free' = any initial fleet, 'runner' = autoscale_sim's "
            f"initial {init} ready replicas (none more before t = 61 s)"
        )
        for mode in args.modes.split(","):
            for period in periods:
                for start in starts:
                    t0 = time.time()
                    kw = dict(step=args.step, bmax=args.bmax, R=args.R, period=period, start=start)
                    seg_h = lb_value(Model(hour, args.K, mode, **kw).run())
                    seg_r = lb_value(Model(hour, args.K, mode, initial=init, **kw).run(), init)
                    seg_p = lb_value(Model(hour[:rest], args.K, mode, **kw).run())
                    f = lambda x: f"{x / 3600:6.2f}"  # noqa: E731
                    day = {
                        (k, w): lb_day(seg_r if w else seg_h, seg_h, seg_p, k, tiles)
                        for k in (0, 5)
                        for w in (False, True)
                    }
                    print(
                        f"  {mode:6s} P {period:2d}s S {start:3.0f}s | azure-conv K=0/1/5 "
                        f"free {f(seg_h[0])} {f(seg_h[1])} {f(seg_h[5])}, runner "
                        f"{f(seg_r[0])} {f(seg_r[1])} {f(seg_r[5])} | azure-conv-24h K=5 "
                        f"free {day[5, False] / 3600:6.1f}, runner {day[5, True] / 3600:6.1f}"
                        f"   ({time.time() - t0:.0f} s)",
                        flush=True,
                    )
    if args.skip_construct:
        return
    print(
        "\nCONSTRUCTIVE (real simulator, pods ready instantly: start_delay (0, 0)); "
        "scale-ups only on an empty queue"
    )
    cfg = replace(CFG, start_delay=(0.0, 0.0))
    first = CFG.replicas_for(hour[:60].mean())  # as autoscale_sim.run_all
    for period in periods:
        t0 = time.time()
        model = Model(
            hour, 1, "sym", step=args.step, bmax=args.bmax, R=args.R, period=period, start=0.0
        )
        v = lb_value(model.run()) / 3600
        for trace, plan in (
            ("azure-conv", [0]),
            ("azure-conv", [1]),
            ("azure-conv-24h", [0] * (tiles + 1)),
            ("azure-conv-24h", [1] * 5 + [0] * tiles),
        ):
            tr = shipped_trace(trace)
            r = simulate(tr, Foresight(cfg, tr.arrivals, model, plan), cfg, first)
            print(
                f"  period {period:2d}s {trace:15s} planned violations {sum(plan)} "
                f"(model {v[min(1, plan[0])]:.2f} GPU-h/hour): {r.gpu_hours:6.2f} GPU-h, "
                f"{r.slo_minutes} SLO-violation min, worst p95 {r.worst_p95_s:.2f} s, "
                f"peak {r.peak_replicas}, {r.scale_events} scale events",
                flush=True,
            )
        print(f"  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
