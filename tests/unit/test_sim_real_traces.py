"""Recorded traffic in bench/autoscale_sim.py: the public trace formats read into input tokens
per second, the shipped Azure trace as recorded and tiled, and a user's file on the command
line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench._sim_real_traces import (
    TraceFormatError,
    file_trace,
    load_series,
    recorded_trace,
    shipped_trace,
)
from bench._sim_traces import DAY_S
from bench.autoscale_sim import main

# Two minutes and a bit of requests: (seconds from the first, input tokens); bins count from
# the first request.
REQUESTS = [(0.0, 100), (0.9, 50), (1.5, 7), (59.99, 3), (60.0, 11), (119.5, 2), (130.0, 5)]
PER_SECOND = {0: 150.0, 1: 7.0, 59: 3.0, 60: 11.0, 119: 2.0}  # the partial third minute dropped


def expected() -> list[float]:
    return [PER_SECOND.get(s, 0.0) for s in range(120)]


def test_azure_llm_csv(tmp_path: Path) -> None:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for offset, tokens in REQUESTS:
        whole, frac = divmod(offset, 1)
        stamp = f"2023-11-16 18:{15 + int(whole) // 60:02d}:{int(whole) % 60:02d}."
        lines.append(f"{stamp}{round(frac * 1e7):07d},{tokens},9")
    path = tmp_path / "azure.csv"
    path.write_text("\n".join(lines) + "\n")
    assert load_series(path) == expected()


def test_burstgpt_csv(tmp_path: Path) -> None:
    lines = ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"]
    lines += [f"{1000 + t},ChatGPT,{n},5,{n + 5},Conversation log" for t, n in REQUESTS]
    path = tmp_path / "burst.csv"
    path.write_text("\n".join(lines) + "\n")
    assert load_series(path) == expected()


def test_mooncake_jsonl_gzipped(tmp_path: Path) -> None:
    rows = [{"timestamp": int(t * 1000), "input_length": n, "output_length": 1, "hash_ids": []}
            for t, n in REQUESTS]  # fmt: skip
    path = tmp_path / "mooncake.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    assert load_series(path) == expected()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "not a known trace format"),
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:00.0,5\n", "shorter than one minute"),
        ('{"timestamp": 5}\n', "input_length"),
        ("# only a comment\n", "empty"),
    ],
)
def test_a_file_that_is_no_trace_says_why(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceFormatError, match=message):
        load_series(path)


def test_the_shipped_azure_trace_is_as_recorded_and_tiles_to_a_day() -> None:
    hour = shipped_trace("azure-conv")
    assert len(hour.arrivals) == 3480  # 58 whole minutes
    assert hour.peak_tokens_per_s == pytest.approx(308_750, rel=1e-4)  # 9.5 replicas' worth
    assert max(hour.arrivals) == pytest.approx(2.7 * hour.peak_tokens_per_s, rel=0.05)
    day = shipped_trace("azure-conv-24h")
    assert len(day.arrivals) == DAY_S
    assert day.arrivals[:3480] == hour.arrivals == day.arrivals[3480 : 2 * 3480]
    assert day.peak_tokens_per_s == hour.peak_tokens_per_s


def test_a_recorded_trace_is_not_smoothed() -> None:
    series = [0.0] * 59 + [600.0] + [10.0] * 60
    trace = recorded_trace("burst", series, "one burst")
    assert trace.arrivals == series
    assert trace.peak_tokens_per_s == 10.0  # the one-minute means: 600/60 and 10


def test_the_cli_replays_a_users_file_scaled_to_a_fleet(tmp_path: Path) -> None:
    rows = [{"timestamp": s * 1000 + 10, "input_length": 50 + (s % 7) * 40} for s in range(1800)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "sim.json"
    code = main(["--traces", "diurnal", "--policies", "embedfleet,fixed", "--trace", str(path),
                 "--trace-peak-replicas", "4", "--json", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    mine = [t for t in report["traces"] if t["name"] == "mine.jsonl"]
    assert mine
    assert mine[0]["peak_tokens_per_s"] == pytest.approx(4 * 50_000 * 0.65)
    assert {r["policy"] for r in report["runs"] if r["trace"] == "mine.jsonl"} == {
        "embedfleet", "fixed",
    }  # fmt: skip
    assert file_trace(path, peak_tokens_per_s=None).peak_tokens_per_s < 20_000  # as recorded


def test_the_cli_refuses_a_file_that_is_no_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    assert main(["--traces", "diurnal", "--policies", "fixed", "--trace", str(path)]) == 2
    assert "not a known trace format" in capsys.readouterr().err
