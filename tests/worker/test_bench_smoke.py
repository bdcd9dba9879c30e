"""Smoke run of bench/engine.py on CPU (tiny random Qwen3, fp32, --quick): every workload
produces figures for both systems, and embedfleet's vectors match the transformers baseline's
on the same inputs and weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BOTH_SYSTEMS = ("queries", "passages", "long", "latency")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    paths = [str(REPO), str(REPO / "worker"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    command = [sys.executable, str(REPO / "bench" / "engine.py")]
    command += ["--device", "cpu", "--model", "tiny", "--quick", "--json", str(out)]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "passages" in done.stdout  # the table was printed
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_every_workload_has_throughput_for_both_systems(report: dict[str, Any]) -> None:
    workloads = report["workloads"]
    assert set(workloads) == {*BOTH_SYSTEMS, "mixed"}
    for name in BOTH_SYSTEMS:
        for system in ("baseline", "embedfleet"):
            phase = workloads[name][system]
            assert phase["status"] == "ok", (name, system)
            assert phase["tokens_per_s"] > 0, (name, system)
            assert phase["texts_per_s"] > 0, (name, system)
            assert phase["tokens"] >= phase["texts"] > 0, (name, system)
    for system in ("baseline", "embedfleet"):
        latency = workloads["latency"][system]["latency_ms"]
        assert 0 < latency["p50_ms"] <= latency["p99_ms"], system


def test_same_inputs_same_vectors(report: dict[str, Any]) -> None:
    workloads = report["workloads"]
    for name in ("queries", "passages", "long"):
        assert workloads[name]["token_counts_match"], name
        assert workloads[name]["baseline"]["tokens"] == workloads[name]["embedfleet"]["tokens"]
        assert workloads[name]["ratio_tokens_per_s"] > 0
    assert workloads["passages"]["cosine"]["min"] >= 0.9999
    assert workloads["passages"]["cosine"]["mean"] >= 0.9999
    # The generated inputs have the requested token counts (end-of-text included).
    inputs = report["inputs"]
    assert 8 <= inputs["queries"]["tokens_min"] <= inputs["queries"]["tokens_max"] <= 48
    assert inputs["long"]["tokens_total"] == 512
    assert inputs["latency"]["tokens_total"] == 16


def test_mixed_section(report: dict[str, Any]) -> None:
    mixed = report["workloads"]["mixed"]
    assert mixed["status"] == "ok"
    assert mixed["arrival_interval_ms"] == pytest.approx(20.0)
    assert mixed["bulk_alone"]["tokens_per_s"] > 0
    assert mixed["bulk_mixed"]["tokens_per_s"] > 0
    assert mixed["bulk_mixed"]["tokens"] == mixed["bulk_alone"]["tokens"]
    for key in ("query_solo", "query_mixed"):
        assert 0 < mixed[key]["p50_ms"] <= mixed[key]["p99_ms"], key
        assert mixed[key]["runs"] >= 1, key
    assert mixed["bulk_tokens_per_s_mixed_over_alone"] > 0
    assert mixed["query_p50_mixed_over_solo"] > 0


def test_environment_is_recorded(report: dict[str, Any]) -> None:
    env = report["environment"]
    assert "bench/engine.py" in env["command"]
    assert "--quick" in env["command"]
    assert env["torch"]
    assert env["transformers"]
    assert env["date"]
    assert env["device"] == "cpu"
    assert env["gpu_name"] is None
    weights = report["model"]["weight_bytes"]
    assert weights["runner"] > 0
    assert weights["baseline_model"] > 0
