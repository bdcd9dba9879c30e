"""What the connection bound costs a client: latency of one keep-alive openai client against
the real worker, with the bounds off, at their defaults, and extreme (a new connection per request).

One `openai.OpenAI` client (default keep-alive pool, max_retries=0) shared by `--threads`
threads, each pacing itself to its share of `--rate`, sends one short sentence per request to
`embedfleet-worker serve` (the CPU sample's model, all-MiniLM-L6-v2, unless `--model`) for
`--seconds` per setting; settings alternate over `--rounds` so drift hits each alike.

    .venv/bin/python bench/connection_latency.py            # about 4 minutes on 2 cores
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
import tempfile
import threading
import time
import urllib.request

import numpy as np
import openai

from bench._server import running_worker

SETTINGS = {
    "off": ["--max-connection-age-seconds", "0", "--max-connection-requests", "0"],
    "default": [],  # 5 s divided by the worker's client connections, or 4 requests
    "every request": ["--max-connection-requests", "1"],
}


def drive(base_url: str, model: str, rate: float, threads: int, seconds: float) -> dict[str, float]:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    client.embeddings.create(model=model, input="warm up")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    interval = threads / rate

    def loop(index: int) -> None:
        time.sleep(interval * index / threads)
        count = 0
        while (started := time.monotonic()) < stop:
            try:
                client.embeddings.create(model=model, input=f"a short sentence {index}-{count}")
                with lock:
                    latencies.append(time.monotonic() - started)
            except openai.OpenAIError as error:
                with lock:
                    errors.append(repr(error))
            count += 1
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    client.close()
    with urllib.request.urlopen(base_url + "/metrics") as response:
        metrics = response.read().decode()
    opened = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("embedfleet_connections_opened_total")
    )
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "connections": opened,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: offline MiniLM)")
    parser.add_argument("--rate", type=float, default=40)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    model_args = ["--device", "cpu"] + (["--model", args.model] if args.model else [])
    served = (
        "sentence-transformers/all-MiniLM-L6-v2" if args.model is None else Path(args.model).name
    )
    results: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    log = Path(tempfile.mkdtemp(prefix="embedfleet-bench-")) / "worker.log"
    for _ in range(args.rounds):
        for name, flags in SETTINGS.items():
            with running_worker([*model_args, *flags], log) as server:
                run = drive(server.url, served, args.rate, args.threads, args.seconds)
                results[name].append(run)
    print(f"openai client, {args.threads} threads, {args.rate:g} requests/s, "
          f"{args.seconds:g} s x {args.rounds} per setting")  # fmt: skip
    print(f"{'connection bound':>16} {'requests':>9} {'errors':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'connections':>11}")  # fmt: skip
    for name, runs in results.items():
        requests = sum(r["requests"] for r in runs)
        print(f"{name:>16} {requests:9.0f} {sum(r['errors'] for r in runs):7.0f} "
              f"{np.median([r['p50_ms'] for r in runs]):7.1f} "
              f"{np.median([r['p99_ms'] for r in runs]):7.1f} "
              f"{sum(r['connections'] for r in runs):11.0f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
