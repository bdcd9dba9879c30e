"""`embedfleet-worker` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from embedfleet_worker import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedfleet-worker",
        description="Serves an embedding model behind an OpenAI-compatible /v1/embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP server (flags: `serve --help`)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if args and args[0] == "serve":
        # Imported here so `--version` stays instant (no torch import).
        from embedfleet_worker.http.server import serve
        from embedfleet_worker.settings import parse_settings

        return serve(parse_settings(args[1:]))
    parser.parse_args(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
