"""A worker's cold start, in parts: `embedfleet-worker serve` started as users start it, several
times in a row on one model folder, each time timed from process start to `/ready`, with the
engine's own phases from its log ("model prepared": compilation, attention plans, CUDA-graph
capture, the largest batch; "model ready": the whole load). With `--compile-cache DIR` each
worker keeps torch.compile's and Triton's caches in DIR, as a pod does on its model cache
volume (the operator sets the same variables); the first run then fills it, the next ones
reuse it. Without it, each run gets a fresh empty cache, as a new pod's /tmp is.

    PYTHONPATH=worker:. python3 -m bench.cold_start --model 4b --tokenizer <qwen3-dir> \\
        --model-dir /tmp/m4b --compile-cache /tmp/compile-cache --runs 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

from bench._server import running_worker


def compile_cache_env(folder: Path) -> dict[str, str]:
    """torch.compile's, Triton's and the tokenizer's on-disk caches in `folder`, as the
    operator sets them on the model cache volume."""
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"),
        "TRITON_CACHE_DIR": str(folder / "triton"),
        "EMBEDFLEET_TOKENIZER_CACHE_DIR": str(folder / "tokenizers"),
    }


def _phases(log: Path, started: float) -> dict[str, object]:
    """The engine's phases and load time from the log, and the timeline: each log line's
    message with its time since the worker's process was started."""
    found: dict[str, object] = {}
    timeline: list[tuple[str, float]] = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        for key in ("load_seconds", "imports_seconds", "prepared_seconds"):
            if key in record:
                found[key] = record[key]
        if isinstance(record.get("phases"), dict):  # "model loaded", then "model prepared"
            found["phases"] = {**found.get("phases", {}), **record["phases"]}  # type: ignore[dict-item]
        stamp = record.get("ts")
        if isinstance(stamp, str):
            when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            timeline.append((str(record.get("msg")), round(when - started, 2)))
    found["timeline"] = timeline
    return found


PREPARED_TIMEOUT_SECONDS = 300


def _query_ms(url: str, count: int = 10) -> list[float]:
    """Milliseconds of `count` single short queries, one after another."""
    body = json.dumps({"input": "what is the capital of france?"}).encode()
    times = []
    for _ in range(count):
        request = urllib.request.Request(
            url + "/v1/embeddings", body, {"Content-Type": "application/json"}
        )
        sent = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        times.append(round(1000 * (time.perf_counter() - sent), 1))
    return times


def _wait_for_line(log: Path, message: str, timeout: float) -> float | None:
    """Waits until the log has a record with this message; None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f'"msg":"{message}"' in log.read_text(errors="replace"):  # one JSON object a line
            return time.monotonic()
        time.sleep(0.1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="4b")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--compile-cache", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--worker-path", type=Path, default=None,
        help="the worker package's parent folder of another checkout (default: this one's)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from bench._model_folder import write_model_folder

    write_model_folder(args.model_dir, args.model, args.tokenizer)
    if args.compile_cache is not None:
        shutil.rmtree(args.compile_cache, ignore_errors=True)  # the first run starts cold
    results = []
    for run in range(args.runs):
        cache = args.compile_cache or Path(tempfile.mkdtemp(prefix="cold-start-cache-"))
        log = Path(tempfile.mkdtemp(prefix="cold-start-")) / "worker.log"
        env = compile_cache_env(cache)
        if args.worker_path is not None:  # another checkout's worker, e.g. before a change
            env["PYTHONPATH"] = f"{args.worker_path}{os.pathsep}{os.getcwd()}"
        started, wall = time.monotonic(), time.time()
        with running_worker(["--model", str(args.model_dir), "--log-level", "info"], log,
                            env=env) as server:  # fmt: skip
            ready = time.monotonic() - started
            # Single queries the moment it is Ready (preparing beside them), then once it has
            # prepared: what a request pays for a start without the wait.
            at_ready = _query_ms(server.url)
            prepared = _wait_for_line(log, "model prepared", PREPARED_TIMEOUT_SECONDS)
            prepared_at = None if prepared is None else round(time.monotonic() - started, 2)
            after = _query_ms(server.url)
        result = {
            "run": run + 1,
            "ready_seconds": round(ready, 2),
            "prepared_seen_seconds": prepared_at,
            "query_ms_at_ready": at_ready,
            "query_ms_prepared": after,
            **_phases(log, wall),
        }
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
