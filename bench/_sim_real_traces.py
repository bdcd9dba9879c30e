"""Recorded traffic for bench/autoscale_sim.py: input tokens arriving per second, read from the
public trace formats users have, as recorded (every burst intact) or tiled to a day.

Formats, told apart by their first line (after `#` comments):
- the shipped per-second series (`second,raw_input_tokens,scaled_tokens`; `bench/traces/`);
- the Azure LLM inference trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`);
- BurstGPT's CSV (`Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`);
- Mooncake's JSONL (`{"timestamp": ms, "input_length": n, ...}` per line).

A request's input tokens all arrive in the second it was sent: an embedding request is its
input. The last partial minute is dropped, so every minute is whole."""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench._sim_traces import DAY_S, Trace, steady_minutes

TRACES_DIR = Path(__file__).resolve().parent / "traces"
SHIPPED = {
    "azure-conv": TRACES_DIR / "azure-conv_tokens_per_s.csv.gz",
}
REAL_TRACE_NAMES = ("azure-conv", "azure-conv-24h")


class TraceFormatError(ValueError):
    """The file is not one of the formats above, or holds no request."""


def _text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8-sig")


def _per_second(times_s: npt.NDArray[np.float64], tokens: npt.NDArray[np.float64]) -> list[float]:
    """Tokens summed per whole second from the first request, the partial last minute dropped."""
    if len(times_s) == 0:
        raise TraceFormatError("the trace holds no request")
    seconds = np.floor(times_s - times_s.min()).astype(np.int64)
    series = np.bincount(seconds, weights=tokens)
    whole = len(series) // 60 * 60
    if whole == 0:
        raise TraceFormatError("the trace is shorter than one minute")
    return [float(x) for x in series[:whole]]


def _azure_time(text: str) -> float:
    # "2023-11-16 18:15:46.6805900": seven fractional digits, which fromisoformat refuses
    day, _, fraction = text.strip().partition(".")
    stamp = datetime.fromisoformat(day).timestamp()
    return stamp + (float("0." + fraction) if fraction else 0.0)


def load_series(path: Path) -> list[float]:
    """Input tokens per second of the trace at `path` (any format above, gzipped or not)."""
    lines = [line for line in _text(path).splitlines() if line.strip() and line[0] != "#"]
    if not lines:
        raise TraceFormatError(f"{path}: empty")
    if lines[0].lstrip().startswith("{"):
        rows = [json.loads(line) for line in lines]
        try:
            times = np.array([float(r["timestamp"]) / 1000 for r in rows])
            tokens = np.array([float(r["input_length"]) for r in rows])
        except KeyError as missing:
            raise TraceFormatError(f"{path}: a JSONL trace needs {missing} in every line") from None
        return _per_second(times, tokens)
    table = list(csv.DictReader(io.StringIO("\n".join(lines))))
    columns = set(table[0]) if table else set()
    if {"second", "scaled_tokens"} <= columns:
        series = [0.0] * (max(int(r["second"]) for r in table) + 1)
        for row in table:
            series[int(row["second"])] = float(row["scaled_tokens"])
        return series[: len(series) // 60 * 60]
    if {"TIMESTAMP", "ContextTokens"} <= columns:
        times = np.array([_azure_time(r["TIMESTAMP"]) for r in table])
        return _per_second(times, np.array([float(r["ContextTokens"]) for r in table]))
    if {"Timestamp", "Request tokens"} <= columns:
        times = np.array([float(r["Timestamp"]) for r in table])
        return _per_second(times, np.array([float(r["Request tokens"]) for r in table]))
    raise TraceFormatError(
        f"{path}: not a known trace format (columns {sorted(columns)}); expected the Azure LLM "
        "CSV (TIMESTAMP, ContextTokens), BurstGPT's CSV (Timestamp, Request tokens), "
        "Mooncake's JSONL (timestamp, input_length) or second,scaled_tokens"
    )


def recorded_trace(
    name: str, series: list[float], description: str, *, tile_to: int | None = None
) -> Trace:
    """A trace of the series as recorded, or repeated end to end up to `tile_to` seconds."""
    arrivals = np.asarray(series, dtype=np.float64)
    if tile_to is not None:
        arrivals = np.tile(arrivals, -(-tile_to // len(arrivals)))[:tile_to]
    starts = np.arange(0, len(arrivals), 60)
    per_minute = np.add.reduceat(arrivals, starts) / np.diff(np.append(starts, len(arrivals)))
    return Trace(
        name=name,
        description=description,
        arrivals=arrivals.tolist(),
        peak_tokens_per_s=float(per_minute.max()),
        mean_tokens_per_s=float(arrivals.mean()),
        steady_minutes=steady_minutes(per_minute, window=10, band=0.10),
    )


def shipped_trace(name: str) -> Trace:
    """`azure-conv` (one hour as recorded) or `azure-conv-24h` (that hour tiled to a day)."""
    base = name.removesuffix("-24h")
    series = load_series(SHIPPED[base])
    what = (
        "Azure LLM inference trace, 'conv' sample (2023-11-16, one hour; input tokens per "
        "second, scaled so the busiest minute is 9.5 replicas' worth at the target)"
    )
    if name.endswith("-24h"):
        return recorded_trace(name, series, what + ", tiled to 24 h", tile_to=DAY_S)
    return recorded_trace(name, series, what)


def file_trace(path: Path, *, peak_tokens_per_s: float | None) -> Trace:
    """A user's trace file, as recorded; scaled so its busiest minute is `peak_tokens_per_s`
    when given (replaying traffic at a fleet size other than the one it was recorded on)."""
    series = load_series(path)
    if peak_tokens_per_s is not None:
        minutes = np.asarray(series).reshape(-1, 60).mean(axis=1)
        factor = peak_tokens_per_s / float(minutes.max()) if minutes.max() > 0 else 1.0
        series = [x * factor for x in series]
    return recorded_trace(path.name, series, f"{path} as recorded")
