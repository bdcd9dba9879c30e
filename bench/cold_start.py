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
from pathlib import Path

from bench._server import running_worker


def compile_cache_env(folder: Path) -> dict[str, str]:
    """torch.compile's and Triton's on-disk caches in `folder` (the worker's own variables)."""
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"),
        "TRITON_CACHE_DIR": str(folder / "triton"),
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
        for key in ("phases", "load_seconds", "imports_seconds"):
            if key in record:
                found[key] = record[key]
        stamp = record.get("ts")
        if isinstance(stamp, str):
            when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            timeline.append((str(record.get("msg")), round(when - started, 2)))
    found["timeline"] = timeline
    return found


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
                            env=env):  # fmt: skip
            ready = time.monotonic() - started
        result = {"run": run + 1, "ready_seconds": round(ready, 2), **_phases(log, wall)}
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
