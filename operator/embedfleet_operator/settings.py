"""Operator settings, read once at start from flags and EMBEDFLEET_OPERATOR_* variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ENV_PREFIX = "EMBEDFLEET_OPERATOR_"


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    peering: str = "embedfleet"
    priority: int = 0
    resync_seconds: float = 30.0  # drift correction period
    log_format: str = "json"
    liveness_endpoint: str | None = None  # e.g. http://0.0.0.0:8080/healthz


def parse_settings(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> OperatorSettings:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="embedfleet-operator run")
    parser.add_argument(
        "--namespace", action="append", dest="namespaces",
        default=[n for n in env.get(ENV_PREFIX + "NAMESPACES", "").split(",") if n],
        help="watch only this namespace (repeatable); default: all",
    )  # fmt: skip
    parser.add_argument("--peering", default=env.get(ENV_PREFIX + "PEERING", "embedfleet"))
    parser.add_argument("--priority", type=int, default=int(env.get(ENV_PREFIX + "PRIORITY", "0")))
    parser.add_argument(
        "--resync-seconds", type=float, default=float(env.get(ENV_PREFIX + "RESYNC_SECONDS", "30"))
    )
    parser.add_argument(
        "--log-format", choices=["json", "plain", "full"],
        default=env.get(ENV_PREFIX + "LOG_FORMAT", "json"),
    )  # fmt: skip
    parser.add_argument(
        "--liveness", dest="liveness_endpoint", default=env.get(ENV_PREFIX + "LIVENESS")
    )
    args = vars(parser.parse_args(argv))
    args["namespaces"] = tuple(args["namespaces"])
    return OperatorSettings(**args)
