"""The load traces of bench/autoscale_sim.py: arrivals in tokens per simulated second, seeded
and deterministic, and the steady segments the flap check looks at.

Every trace is a shape (a fraction of the peak, as a function of the time of day) times the
peak rate, with two kinds of small noise that real traffic has: a slow wander of a few percent
from minute to minute and Poisson arrivals of requests of `request_tokens` each within every
second. The peak is given in replicas' worth at the target utilisation, so the same trace
means the same load whatever the per-replica capacity is set to."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DAY_S = 86_400
Shape = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]  # hours -> fraction


@dataclass(frozen=True)
class Trace:
    name: str
    description: str
    arrivals: list[float]  # tokens arriving in each simulated second
    peak_tokens_per_s: float  # the highest one-minute mean: what a fixed fleet is sized for
    mean_tokens_per_s: float
    steady_minutes: list[bool]  # per minute: inside a steady segment (see steady_minutes)


def _diurnal(hours: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Business-hours traffic: 8% of the peak at night, a sin^2 day from 07:00 to 21:00
    peaking at 14:00, and a lunch dip of 12% around 12:45. Mean about a third of the peak."""
    day = np.where((hours > 7) & (hours < 21), np.sin(np.pi * (hours - 7) / 14) ** 2, 0.0)
    lunch = 1 - 0.12 * np.exp(-(((hours - 12.75) / 0.5) ** 2))
    return (0.08 + 0.92 * day) * lunch


def _spike(hours: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A steady tenth of the peak all day, and a sudden 10x spike from 10:00 for 20 minutes
    (reaching full height within 10 s, as when a client retries a backlog or a batch starts)."""
    start, length, rise = 10.0, 20 / 60, 10 / 3600
    up = np.clip((hours - start) / rise, 0, 1)
    down = np.clip((start + length + rise - hours) / rise, 0, 1)
    return 0.1 + 0.9 * np.minimum(up, down)


def _onoff(hours: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Batch jobs: four 90-minute bursts at the peak (starting 02:00, 08:00, 14:00, 20:00,
    reaching full rate within a minute), no traffic at all in the hours between."""
    out = np.zeros_like(hours)
    rise = 1 / 60
    for start in (2.0, 8.0, 14.0, 20.0):
        up = np.clip((hours - start) / rise, 0, 1)
        down = np.clip((start + 1.5 - hours) / rise, 0, 1)
        out = np.maximum(out, np.minimum(up, down))
    return out


def _ramp(hours: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A launch: 10% of the peak until 02:00, a straight ramp to the peak at 22:00, then flat."""
    return 0.1 + 0.9 * np.clip((hours - 2) / 20, 0, 1)


SHAPES: dict[str, Shape] = {
    "diurnal": _diurnal,
    "spike": _spike,
    "onoff": _onoff,
    "ramp": _ramp,
}
TRACE_NAMES = tuple(SHAPES)


def steady_minutes(per_minute: npt.NDArray[np.float64], window: int, band: float) -> list[bool]:
    """A minute is steady when every one-minute mean rate in the `window` minutes centred on
    it lies within +-`band` of that window's mean (an idle stretch, all zero, is steady)."""
    out = [False] * len(per_minute)
    half = window // 2
    for m in range(half, len(per_minute) - (window - half) + 1):
        chunk = per_minute[m - half : m - half + window]
        mean = float(chunk.mean())
        out[m] = bool(np.all(np.abs(chunk - mean) <= band * mean))
    return out


def make_trace(
    name: str,
    *,
    peak_tokens_per_s: float,
    request_tokens: float,
    seed: int,
    seconds: int = DAY_S,
    wander: float = 0.03,
) -> Trace:
    """The trace `name`: shape x peak, a slow multiplicative wander (AR(1) per minute, about
    +-`wander`), then Poisson request arrivals per second, each of `request_tokens` tokens."""
    shape = SHAPES[name]
    rng = np.random.default_rng([seed, TRACE_NAMES.index(name)])
    hours = np.arange(seconds, dtype=np.float64) / 3600
    rate = shape(hours) * peak_tokens_per_s
    minutes = math.ceil(seconds / 60)
    drift = np.empty(minutes)
    level = 0.0
    for m in range(minutes):  # AR(1), stationary standard deviation `wander`
        level = 0.9 * level + wander * math.sqrt(1 - 0.81) * float(rng.standard_normal())
        drift[m] = level
    rate *= np.exp(np.repeat(drift, 60)[:seconds])
    requests = rng.poisson(rate / request_tokens)
    arrivals = requests.astype(np.float64) * request_tokens
    starts = np.arange(0, seconds, 60)
    per_minute = np.add.reduceat(arrivals, starts) / np.diff(np.append(starts, seconds))
    return Trace(
        name=name,
        description=" ".join((shape.__doc__ or "").split()),
        arrivals=arrivals.tolist(),
        peak_tokens_per_s=float(per_minute.max()),
        mean_tokens_per_s=float(arrivals.mean()),
        steady_minutes=steady_minutes(per_minute, window=10, band=0.10),
    )
