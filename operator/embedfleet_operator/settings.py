"""The operator's own settings (not kopf's `kopf.OperatorSettings`), read once at start from
flags and EMBEDFLEET_OPERATOR_* variables; each default is written once, on the dataclass."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ENV_PREFIX = "EMBEDFLEET_OPERATOR_"
# The workers' image when an EmbeddingService sets no spec.image; the chart sets it from its
# `registry` value, so a private registry is one setting.
DEFAULT_WORKER_IMAGE = "ghcr.io/embedfleet/worker:0.1.0"
# The activator of scale-to-zero services runs from the operator's own image.
DEFAULT_ACTIVATOR_IMAGE = "ghcr.io/embedfleet/operator:0.1.0"


@dataclass(frozen=True)
class EmbedfleetSettings:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    peering: str = "embedfleet"
    priority: int = 0
    resync_seconds: float = 30.0  # drift correction period
    log_format: str = "json"
    liveness_endpoint: str | None = None  # e.g. http://0.0.0.0:8080/healthz
    autoscale_seconds: float = 15.0  # the autoscaler's tick
    scrape_timeout_seconds: float = 2.0  # per worker /metrics request
    metrics_address: str | None = None  # host:port for the operator's /metrics; off if unset
    worker_image: str = DEFAULT_WORKER_IMAGE
    activator_image: str = DEFAULT_ACTIVATOR_IMAGE


def parse_settings(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> EmbedfleetSettings:
    env = os.environ if environ is None else environ
    defaults = EmbedfleetSettings()
    parser = argparse.ArgumentParser(prog="embedfleet-operator run")
    parser.add_argument(
        "--namespace", action="append", dest="namespaces",
        default=None,
        help="watch only this namespace (repeatable); default: all",
    )  # fmt: skip
    parser.add_argument("--peering", default=env.get(ENV_PREFIX + "PEERING", defaults.peering))
    parser.add_argument(
        "--priority",
        type=int,
        default=int(env.get(ENV_PREFIX + "PRIORITY", defaults.priority)),
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env.get(ENV_PREFIX + "RESYNC_SECONDS", defaults.resync_seconds)),
    )
    parser.add_argument(
        "--log-format", choices=["json", "plain", "full"],
        default=env.get(ENV_PREFIX + "LOG_FORMAT", defaults.log_format),
    )  # fmt: skip
    parser.add_argument(
        "--liveness", dest="liveness_endpoint", default=env.get(ENV_PREFIX + "LIVENESS")
    )
    parser.add_argument(
        "--autoscale-seconds", type=float,
        default=float(env.get(ENV_PREFIX + "AUTOSCALE_SECONDS", defaults.autoscale_seconds)),
        help="autoscaling tick period",
    )  # fmt: skip
    parser.add_argument(
        "--scrape-timeout-seconds", type=float,
        default=float(
            env.get(ENV_PREFIX + "SCRAPE_TIMEOUT_SECONDS", defaults.scrape_timeout_seconds)
        ),
    )  # fmt: skip
    parser.add_argument(
        "--metrics-address", default=env.get(ENV_PREFIX + "METRICS_ADDRESS"),
        help="host:port to serve the operator's Prometheus metrics on",
    )  # fmt: skip
    parser.add_argument(
        "--worker-image", default=env.get(ENV_PREFIX + "WORKER_IMAGE", defaults.worker_image),
        help="the workers' image when an EmbeddingService sets no spec.image",
    )  # fmt: skip
    parser.add_argument(
        "--activator-image",
        default=env.get(ENV_PREFIX + "ACTIVATOR_IMAGE", defaults.activator_image),
        help="the image of scale-to-zero services' activators (the operator's own)",
    )  # fmt: skip
    args = vars(parser.parse_args(argv))
    from_env = [n for n in env.get(ENV_PREFIX + "NAMESPACES", "").split(",") if n]
    args["namespaces"] = tuple(args["namespaces"] or from_env)  # flags replace, not extend
    return EmbedfleetSettings(**args)
