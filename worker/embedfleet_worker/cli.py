"""`embedfleet-worker` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from embedfleet_worker import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedfleet-worker",
        description="Serves an embedding model behind an OpenAI-compatible /v1/embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0
