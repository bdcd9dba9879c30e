"""The HTTP process's CPU time per request, by route: what one request costs the worker's
event loop, apart from the engine. Starts `embedfleet-worker serve` on a tiny random-weight
Qwen3 on CPU (the engine costs little and runs in its own process), sends N requests per route
from one aiohttp client at a given concurrency, and reads the server process's CPU time from
/proc before and after.

    PYTHONPATH=worker:. .venv/bin/python bench/http_cpu.py --tokenizer <qwen3-dir> --log-level info
    PYTHONPATH=worker:. .venv/bin/python bench/http_cpu.py ... --server-path <checkout>/worker"""

# ruff: noqa: E402  (sys.path is fixed before the imports: see bench/http.py)

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import asyncio
import os
import tempfile
import time
from typing import Any

import aiohttp

from bench._http_load import process_cpu_seconds
from bench._model_folder import write_model_folder
from bench._server import running_worker

ROUTES = (
    ("health", "GET", "/health", None),
    ("models", "GET", "/v1/models", None),
    ("embeddings", "POST", "/v1/embeddings", {"input": ["what is the capital of france"]}),
)


async def send(url: str, method: str, body: Any, count: int, concurrency: int) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        left = iter(range(count))

        async def caller() -> None:
            for _ in left:
                async with session.request(method, url, json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: {response.status}")

        await asyncio.gather(*(caller() for _ in range(concurrency)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=None, help="Qwen3 tokenizer folder")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server-path", type=Path, default=None, help="a checkout's worker/")
    args = parser.parse_args()
    from bench._systems import default_tokenizer_dir

    workdir = Path(tempfile.mkdtemp(prefix="embedfleet-http-cpu-"))
    folder = write_model_folder(workdir / "tiny", "tiny", args.tokenizer or default_tokenizer_dir())
    env = {}
    if args.server_path:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(args.server_path), os.environ.get("PYTHONPATH", "")]
        )
    serve = ["--model", str(folder), "--device", "cpu", "--dtype", "float32",
             "--log-level", args.log_level]  # fmt: skip
    with running_worker(serve, workdir / "worker.log", env) as server:
        print(f"log level {args.log_level}, {args.requests} requests per route and round, "
              f"{args.concurrency} concurrent")  # fmt: skip
        for round_ in range(1, args.rounds + 1):
            for name, method, path, body in ROUTES:
                before, started = process_cpu_seconds(server.pid), time.perf_counter()
                asyncio.run(send(server.url + path, method, body, args.requests, args.concurrency))
                wall = time.perf_counter() - started
                cpu_ms = 1000 * (process_cpu_seconds(server.pid) - before) / args.requests
                print(f"round {round_} {name:<11} {cpu_ms:.3f} ms CPU per request, "
                      f"{args.requests / wall:,.0f} requests/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
