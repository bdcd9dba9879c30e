"""GPU-hours against SLO-violation minutes, one point per policy and one panel per trace, from
bench/autoscale_sim.py's `--json` output. With `--before` (an earlier run's JSON), embedfleet's
point there is drawn too, with an arrow to its point now.

    PYTHONPATH=operator:. .venv/bin/python bench/autoscale_sim.py --json after.json
    .venv/bin/python bench/autoscale_plot.py after.json --before before.json --out plot.png

Needs matplotlib (in the test extra)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = {"embedfleet": "C0", "embedfleet-zero": "C4", "hpa": "C1", "knative": "C2", "fixed": "C7",
           "oracle": "C3"}  # fmt: skip


def points(report: dict[str, Any]) -> dict[str, dict[str, tuple[float, int]]]:
    """trace -> policy -> (GPU-hours, SLO-violation minutes), in the report's order."""
    out: dict[str, dict[str, tuple[float, int]]] = {}
    for run in report["runs"]:
        out.setdefault(run["trace"], {})[run["policy"]] = (run["gpu_hours"], run["slo_minutes"])
    return out


def plot(after: dict[str, Any], before: dict[str, Any] | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or in CI
    import matplotlib.pyplot as plt

    now, then = points(after), points(before) if before else {}
    columns = min(3, len(now))
    rows = math.ceil(len(now) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for index, (trace, policies) in enumerate(now.items()):
        ax = axes[index // columns][index % columns]
        for policy, (hours, minutes) in policies.items():
            colour = COLOURS.get(policy, "k")
            ax.scatter(hours, minutes, color=colour, label=policy, zorder=3)
            ax.annotate(policy, (hours, minutes), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)  # fmt: skip
        old = then.get(trace, {}).get("embedfleet")
        if old is not None and "embedfleet" in policies:
            ax.scatter(*old, color=COLOURS["embedfleet"], marker="x", zorder=3)
            arrow = {"arrowstyle": "->", "color": COLOURS["embedfleet"]}
            ax.annotate("", xy=policies["embedfleet"], xytext=old, arrowprops=arrow)
        ax.set_title(trace, fontsize=10)
        ax.set_xlabel("GPU-hours")
        ax.set_ylabel("SLO-violation minutes")
        ax.grid(alpha=0.3)
    for index in range(len(now), rows * columns):
        axes[index // columns][index % columns].axis("off")
    note = " (x: embedfleet before)" if before else ""
    figure.suptitle(f"Autoscaling, simulated: cost against SLO, lower left is better{note}")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("report", type=Path, help="autoscale_sim.py --json output")
    parser.add_argument("--before", type=Path, default=None, help="an earlier run's JSON")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    after = json.loads(args.report.read_text())
    before = json.loads(args.before.read_text()) if args.before else None
    plot(after, before, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
