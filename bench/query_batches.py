"""What one batch of queries costs the Qwen3 runner on a GPU, by batch size: through the CUDA
graphs as shipped, eagerly (no graph), and through candidate graph buckets.

Single queries over HTTP reach the engine as batches of whatever waits (40-60 queries at 128
concurrent on an H200), so the cost of those batch sizes sets the worker's query throughput.

    PYTHONPATH=worker:. python bench/query_batches.py --model 4b [--json out.json]
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
import json
from typing import Any

import numpy as np
import torch

from bench._inputs import query_lengths
from bench._measure import timed
from bench._systems import build_model, build_runner, make_config
from embedfleet_worker.model.runners.qwen3 import Qwen3Runner
from embedfleet_worker.model.runners.qwen3_graphs import Bucket, SmallBatchGraphs

SIZES = (1, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256)


def parse_buckets(text: str) -> list[Bucket]:
    """`768,1024,...`: query buckets of that many tokens (8 tokens a slot, 512 at most each)."""
    return [Bucket(int(t), int(t) // 8, 512) for t in text.split(",") if t]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="4b")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--candidate", default="", help="token sizes of candidate buckets")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    config = make_config(args.model)
    model = build_model(config, device, dtype, seed=0)
    runner: Qwen3Runner = build_runner(model, config, device, dtype)
    del model
    torch.cuda.empty_cache()
    shipped = runner.graphs
    candidate = None
    if args.candidate:
        small = [b for b in shipped.buckets if b.tokens <= 512]
        candidate = SmallBatchGraphs(runner, [*small, *parse_buckets(args.candidate)])
        candidate.capture_all()
    rng = np.random.default_rng(0)
    rows = []
    print(f"{torch.cuda.get_device_name()}, {args.model}: ms per batch (texts/s)")
    for n in SIZES:
        batch = [rng.integers(1, 150000, size).tolist() for size in query_lengths(n, rng)]
        tokens = sum(len(s) for s in batch)
        row: dict[str, Any] = {"queries": n, "tokens": tokens}
        for name, graphs in (("graphs", shipped), ("eager", None), ("candidate", candidate)):
            if name == "candidate" and candidate is None:
                continue
            runner.graphs = graphs
            seconds = timed(lambda b=batch: runner.embed(b), args.repeats, warmup=2)  # type: ignore[misc]
            row[f"{name}_ms"] = 1000 * seconds
        runner.graphs = shipped
        rows.append(row)
        cells = "  ".join(
            f"{k[:-3]} {row[k]:6.2f} ({1000 * n / row[k]:6.0f})" for k in row if k.endswith("_ms")
        )
        print(f"{n:4d} queries {tokens:5d} tokens  {cells}", flush=True)
    report = {"gpu": torch.cuda.get_device_name(), "model": args.model, "rows": rows,
              "candidate": args.candidate}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
