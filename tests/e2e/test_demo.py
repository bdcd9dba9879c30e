"""`make demo`'s program end to end, as a user runs it: real similarities, at least one
scale-up and one scale-down with their reasons, the burst's requests spread over the workers
with none failed, exit 0, and no process left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def session_members(session: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def test_demo_runs_the_whole_product_and_cleans_up() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.demo"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own session: every descendant is findable afterwards
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=480)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
    print(output)
    assert process.returncode == 0, output[-4000:]
    similarities = re.findall(r"^\s+((?:-?\d\.\d\d\s+){4})\s*(.+)$", output, re.MULTILINE)
    assert len(similarities) == 4, output
    rows = [[float(x) for x in row.split()] for row, _ in similarities]
    assert all(abs(rows[i][i] - 1.0) < 0.01 for i in range(4))
    assert rows[0][1] > 0.5 > rows[0][2]  # cat/kitten alike, cat/markets not
    assert re.search(r"scaled up: 1 -> \d replicas \(\w+: .+\)", output), output
    assert re.search(r"scaled down: \d -> 1 replicas \(\w+: .+\)", output), output
    # Every worker the burst scaled up to served part of the pooled client's requests.
    per_worker = re.findall(r"^    (\S+): +(\d+) / +(\d+)$", output, re.MULTILINE)
    assert len(per_worker) >= 2, output
    assert all(int(last_20s) > 0 for _, _, last_20s in per_worker), per_worker
    assert re.search(r"burst over: \d+ requests answered, 0 failed", output), output
    assert "LEFT RUNNING" not in output
    assert session_members(process.pid) == []
