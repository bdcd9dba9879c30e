"""Where a fresh worker's first request of each size spends its time, against new texts of the
same size later: per request, the client's wall time, the server's request duration, the
engine's busy time and queue wait, and how much the GPU memory in use grew (all read from the
worker's /metrics around each request).

bench/http.py's `first` workload says whether the first request is slower; this says which
side of the worker pays for it. It found the allocator: on an H200 a fresh 4B worker's first
8K-token request spent 90 ms more in the engine than later ones while the GPU memory in use grew
by 1.3 GiB.

    PYTHONPATH=worker:. python bench/first_requests.py --model-dir /tmp/m4b [--tokenizer DIR]
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
import asyncio

import numpy as np

from bench import _http_load as load
from bench._inputs import TextMaker
from bench._model_folder import write_model_folder
from bench._server import running_worker

SIZES = (16, 2048, 8192, 12000, 16000)
SERIES = {
    "server_ms": "embedfleet_request_duration_seconds_sum",
    "busy_ms": "embedfleet_engine_busy_seconds_total",
    "queue_ms": "embedfleet_queue_wait_seconds_sum",
    "gpu_mib": "embedfleet_gpu_memory_used_bytes",
}
SCALE = {"server_ms": 1e3, "busy_ms": 1e3, "queue_ms": 1e3, "gpu_mib": 2.0**-20}


def totals(url: str) -> dict[str, float]:
    """Each series summed over its labels, now."""
    series = load.scrape(url)
    return {
        key: sum(v for k, v in series.items() if k.split("{")[0] == name)
        for key, name in SERIES.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="4b", help="architecture of the random weights")
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="served as it is if it holds weights, else written there")  # fmt: skip
    parser.add_argument("--tokenizer", type=Path, default=None, help="Qwen3 tokenizer folder")
    parser.add_argument("--serve-args", default="", help="extra `serve` flags")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from bench._systems import default_tokenizer_dir

    tokenizer_dir = args.tokenizer or default_tokenizer_dir()
    maker = TextMaker(AutoTokenizer.from_pretrained(tokenizer_dir))
    rng = np.random.default_rng(args.seed)
    folder = write_model_folder(args.model_dir, args.model, tokenizer_dir)
    serve = ["--model", str(folder), "--dtype", "bfloat16", *args.serve_args.split()]
    # First use of each size by a prepared worker (compiled kernels, CUDA graphs), as it is
    # seconds after Ready; bench/cold_start.py measures the time before that.
    prepared = {"EMBEDFLEET_PREPARE_BEFORE_READY": "1"}
    log = args.model_dir.parent / "first_requests.log"
    with running_worker(serve, log, env=prepared) as server:
        for size in SIZES:
            texts = maker.make([size - 1] * 4, rng)  # the end-of-text token comes on top
            for label, text in zip(("first", "new", "new", "new"), texts, strict=True):
                before = totals(server.url)
                run = asyncio.run(load.sequential(server.url, [text]))
                after = totals(server.url)
                d = {k: (after[k] - before[k]) * SCALE[k] for k in SERIES}
                line = (
                    f"{size:>6} {label:>5}: client {run.wall_s * 1e3:7.1f} ms, server "
                    f"{d['server_ms']:7.1f}, engine busy {d['busy_ms']:7.1f}, queue "
                    f"{d['queue_ms']:5.1f}, GPU memory +{d['gpu_mib']:.0f} MiB"
                )
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
