"""`embedfleet-worker` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence

from embedfleet_worker import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedfleet-worker",
        description="Serves an embedding model behind an OpenAI-compatible /v1/embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP server (flags: `serve --help`)", add_help=False)
    commands.add_parser(
        "prefetch", help="fetch a hub model into a cache folder (`prefetch --help`)", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if args and args[0] == "serve":
        from embedfleet_worker.engine.launch import launch_early
        from embedfleet_worker.settings import parse_settings

        settings = parse_settings(args[1:])
        with _shared_metrics(settings.api_processes):
            # The engine's process first: it imports torch and loads the model while this
            # process imports its own (launch.py says why and when).
            launched = launch_early(settings, args[1:])
            # Imported here so `--version` stays instant (no torch import), and after the
            # metrics mode is set (prometheus_client reads it once, on import).
            from embedfleet_worker.http.server import serve

            return serve(settings, argv=args[1:], launched=launched)
    if args and args[0] == "prefetch":
        from embedfleet_worker.prefetch import main as prefetch

        return prefetch(args[1:])
    parser.parse_args(args)
    parser.print_help()
    return 2


@contextlib.contextmanager
def _shared_metrics(api_processes: int) -> Iterator[None]:
    """With several API processes, a folder for prometheus_client's multiprocess mode (the
    further processes inherit it), removed when the worker exits."""
    if api_processes == 1 or "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        yield
        return
    folder = tempfile.mkdtemp(prefix="embedfleet-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
