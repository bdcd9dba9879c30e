"""Worker settings: every flag of `embedfleet-worker serve` also comes from an environment
variable (EMBEDFLEET_<FLAG>, flags win). Read once at startup into a frozen object."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "EMBEDFLEET_"


@dataclass(frozen=True)
class WorkerSettings:
    model: str | None = None  # None: the offline default (all-MiniLM-L6-v2 from its package)
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    runner: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_tokens: int = 16384
    max_batch_size: int = 256
    max_inputs_per_request: int = 2048
    max_input_tokens: int | None = None
    max_request_bytes: int = 32 * 1024 * 1024
    max_queue_tokens: int = 1 << 20
    default_instruction: str | None = None
    served_model_names: tuple[str, ...] = field(default_factory=tuple)
    api_key_file: Path | None = None
    model_cache_dir: Path | None = None
    offline: bool = False
    fused_norms: bool = False
    drain_timeout_seconds: float = 30.0
    # Connections: see http/connections.py (spreading keep-alive clients) and the README.
    max_connection_age_seconds: float = 5.0
    max_connection_requests: int = 4
    keep_alive_timeout_seconds: int = 120
    api_processes: int = 1  # HTTP processes sharing the port and the one engine process
    log_level: str = "info"
    log_event_loop_stalls_ms: float = 0.0  # 0: off


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if not number >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value}")
    return number


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", help="local folder or Hugging Face hub id (default: offline MiniLM)")
    add("--revision", help="hub revision to pin: branch, tag or commit")
    add("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto")
    add("--device", choices=["auto", "cuda", "cpu"], default="auto")
    add("--runner", choices=["auto", "qwen3", "transformers"], default="auto")
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=8000)
    add("--max-batch-tokens", type=_positive, default=16384)
    add("--max-batch-size", type=_positive, default=256)
    add("--max-inputs-per-request", type=_positive, default=2048)
    add("--max-input-tokens", type=_positive, default=None)
    add("--max-request-bytes", type=_positive, default=32 * 1024 * 1024)
    add("--max-queue-tokens", type=_positive, default=1 << 20)
    add("--default-instruction", default=None)
    add(
        "--served-model-name",
        action="append",
        dest="served_model_names",
        default=None,
        help="name clients use in `model` (repeatable; aliases)",
    )
    add("--api-key-file", type=Path, default=None, help="file holding the API key")
    add("--model-cache-dir", type=Path, default=None, help="hub cache (e.g. /models)")
    add("--offline", action="store_true", default=False, help="never contact the hub")
    add(
        "--fused-norms", action="store_true", default=False,
        help="Qwen3 on CUDA: fuse RMSNorm's reduction too (faster; min cosine vs "
        "transformers bf16 0.99897 instead of 0.99903 on 4B, see BENCHMARKS.md)",
    )  # fmt: skip
    add("--drain-timeout-seconds", type=float, default=30.0)
    add(
        "--max-connection-age-seconds", type=_non_negative, default=5.0,
        help="close a client connection between requests once it is this old, divided by the "
        "client connections this worker holds (so keep-alive clients spread over new "
        "replicas); 0: never",
    )  # fmt: skip
    add(
        "--max-connection-requests", type=_non_negative_int, default=4,
        help="close a client connection after this many requests (jittered); 0: no limit",
    )  # fmt: skip
    add(
        "--keep-alive-timeout-seconds", type=_positive, default=120,
        help="idle time before the worker closes a connection; above client pool expiry "
        "(httpx/openai 5 s, aiohttp 15 s, Go 90 s) so the client, not the server, ends it",
    )  # fmt: skip
    add(
        "--api-processes", type=_positive, default=1,
        help="HTTP processes sharing the port and the one engine process (parsing, "
        "tokenising and writing answers in parallel; vLLM's --api-server-count)",
    )  # fmt: skip
    add("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    add(
        "--log-event-loop-stalls-ms", type=_non_negative, default=0.0,
        help="log the HTTP event loop's stack whenever it is blocked longer than this "
        "(a diagnostic, beside the embedfleet_event_loop_lag_seconds histogram); 0: off",
    )  # fmt: skip


def environment_defaults(
    parser: argparse.ArgumentParser, environ: Mapping[str, str]
) -> dict[str, object]:
    """Flag defaults taken from EMBEDFLEET_* variables, converted by each flag's own type."""
    defaults: dict[str, object] = {}
    for action in parser._actions:  # argparse offers no public iterator over its actions
        if not action.option_strings or action.dest == "help":
            continue
        name = ENV_PREFIX + action.dest.upper()
        if action.dest == "served_model_names":
            name = ENV_PREFIX + "SERVED_MODEL_NAME"
        if name not in environ:
            continue
        raw = environ[name]
        if action.dest == "served_model_names":
            defaults[action.dest] = [n.strip() for n in raw.split(",") if n.strip()]
        elif action.nargs == 0:  # store_true flags
            defaults[action.dest] = raw.strip().lower() in {"1", "true", "yes", "on"}
        else:
            convert = action.type if callable(action.type) else str
            try:
                defaults[action.dest] = convert(raw)
            except (ValueError, argparse.ArgumentTypeError) as error:
                parser.error(f"{name}={raw!r}: {error}")
    return defaults


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> WorkerSettings:
    parser = argparse.ArgumentParser(prog="embedfleet-worker serve")
    add_serve_arguments(parser)
    parser.set_defaults(**environment_defaults(parser, os.environ if environ is None else environ))
    args = vars(parser.parse_args(argv))
    args["served_model_names"] = tuple(args["served_model_names"] or ())
    return WorkerSettings(**args)
