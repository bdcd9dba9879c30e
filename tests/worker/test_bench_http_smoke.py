"""Smoke run of bench/http.py --quick on CPU (MiniLM): the real server as a subprocess, every
HTTP workload (raw float and base64, the openai client, latency, mixed, first request) answers
without an error, and the report names each one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_http_benchmark_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    paths = [str(REPO), str(REPO / "worker"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    command = [sys.executable, str(REPO / "bench" / "http.py"), "--quick", "--json", str(out)]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "errors: 0" in done.stdout
    http = json.loads(out.read_text())["http"]
    for name in ("queries_float", "queries_base64", "queries_openai", "queries32_float",
                 "passages_float", "passages_base64", "latency"):  # fmt: skip
        assert http[name]["errors"] == 0, http[name]
        assert http[name]["texts_per_s"] > 0, http[name]
    assert http["mixed"]["query_mixed"]["requests"] > 0
    assert set(http["first"]) == {"16", "512", "2048", "8192"}
    samples, late = http["loop_lag_after"]
    assert samples > 0
    assert late >= 0
