"""Figures from measurements: latency percentiles, cosine agreement, ratios. NumPy only, so
that the HTTP benchmark's client processes (bench/_http_load.py, started by spawn) import no
torch: that import took seconds per client process."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def percentiles(latencies_s: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "runs": float(len(ms)),
    }


def cosine_stats(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> dict[str, float]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return {"min": float(cos.min()), "mean": float(cos.mean())}


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours is not None and theirs else None
