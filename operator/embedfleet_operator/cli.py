"""`embedfleet-operator` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from embedfleet_operator import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedfleet-operator",
        description="Reconciles EmbeddingService resources into GPU worker fleets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the operator (flags: `run --help`)", add_help=False)
    commands.add_parser(
        "activate",
        help="run a scale-to-zero service's activator (flags: `activate --help`)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "run":
        return run(args[1:])
    if args and args[0] == "activate":
        from embedfleet_operator import activator  # aiohttp only: no kopf

        return activator.run(args[1:])
    build_parser().parse_args(args)
    build_parser().print_help()
    return 2


def run(argv: Sequence[str]) -> int:
    # kopf is imported here so `--version` and the pure modules stay light.
    import kopf

    from embedfleet_operator import handlers
    from embedfleet_operator.api_outage import ApiOutage, KopfRetryFilter
    from embedfleet_operator.settings import parse_settings

    settings = parse_settings(argv)
    handlers.register()
    kopf.configure(
        log_format={"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN}.get(
            settings.log_format, kopf.LogFormat.FULL
        )
    )
    # One outage at a time for the whole process; after kopf configured logging, its
    # per-request retry messages go into the outage's one WARNING (on the root logger's
    # handlers, where every kopf logger's records arrive).
    # One line per worker scrape (httpx logs each request at INFO) is 13 lines a second at 200
    # services: failures are counted in metrics and said in status instead.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    outage = ApiOutage()
    for handler in logging.getLogger().handlers:
        handler.addFilter(KopfRetryFilter(outage))
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=settings.liveness_endpoint,
        standalone=False,
        peering_name=settings.peering,
        priority=settings.priority,
        memo=kopf.Memo(settings=settings, outage=outage),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
