"""Worker settings: every flag of `embedfleet-worker serve` also comes from an environment
variable (EMBEDFLEET_<FLAG>, flags win). Read once at startup into a frozen object.

Each setting is declared once, as a `WorkerSettings` field: its default, and in its metadata
(`serve_flag`) the help, the choices, the argparse type that converts and checks a value, and
the flag's spelling when it is not the field's name. The flags, the variables and the
engine's configuration (`EngineConfig`) all derive from that one declaration."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "EMBEDFLEET_"
_TRUE = frozenset({"1", "true", "yes", "on"})


def serve_flag(
    help: str | None = None,
    *,
    type: Callable[[str], Any] | None = None,
    choices: Sequence[str] | None = None,
    spelling: str | None = None,
) -> dict[str, Any]:
    """The `metadata` of a `WorkerSettings` field: how `serve` reads it. A field's kind follows
    its default: a bool is a switch (`--flag`; the variable is true for 1/true/yes/on), a tuple
    a repeatable flag (the variable: comma-separated), anything else one value that `type`
    converts and checks, from the flag and from the variable alike (none: a string).
    `spelling` is the flag when it is not the field's name (`--served-model-name` for
    `served_model_names`); the variable is ENV_PREFIX plus the flag's name. A field without
    metadata is a string-valued flag with no help."""
    return {"help": help, "type": type, "choices": choices, "spelling": spelling}


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


@dataclass(frozen=True)
class WorkerSettings:
    model: str | None = field(  # None: the offline default (all-MiniLM-L6-v2 from its package)
        default=None,
        metadata=serve_flag("local folder or Hugging Face hub id (default: offline MiniLM)"),
    )
    revision: str | None = field(
        default=None, metadata=serve_flag("hub revision to pin: branch, tag or commit")
    )
    dtype: str = field(
        default="auto", metadata=serve_flag(choices=["auto", "bfloat16", "float16", "float32"])
    )
    device: str = field(default="auto", metadata=serve_flag(choices=["auto", "cuda", "cpu"]))
    runner: str = field(
        default="auto", metadata=serve_flag(choices=["auto", "qwen3", "transformers"])
    )
    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=serve_flag(type=int))
    max_batch_tokens: int = field(default=16384, metadata=serve_flag(type=_positive))
    max_batch_size: int = field(default=256, metadata=serve_flag(type=_positive))
    max_inputs_per_request: int = field(default=2048, metadata=serve_flag(type=_positive))
    max_input_tokens: int | None = field(default=None, metadata=serve_flag(type=_positive))
    max_request_bytes: int = field(default=32 * 1024 * 1024, metadata=serve_flag(type=_positive))
    max_queue_tokens: int = field(default=1 << 20, metadata=serve_flag(type=_positive))
    default_instruction: str | None = None
    served_model_names: tuple[str, ...] = field(
        default=(),
        metadata=serve_flag(
            "name clients use in `model` (repeatable; aliases)", spelling="--served-model-name"
        ),
    )
    api_key_file: Path | None = field(
        default=None, metadata=serve_flag("file holding the API key", type=Path)
    )
    model_cache_dir: Path | None = field(
        default=None, metadata=serve_flag("hub cache (e.g. /models)", type=Path)
    )
    offline: bool = field(default=False, metadata=serve_flag("never contact the hub"))
    task: str = field(
        default="auto",
        metadata=serve_flag(
            "embed (/v1/embeddings) or rerank (/v1/rerank, a Qwen3 reranker); auto: as the "
            "model folder says",
            choices=["auto", "embed", "rerank"],
        ),
    )
    tokenizer_cache_dir: Path | None = field(
        default=None,
        metadata=serve_flag(
            "keep the built tokenizer here for later starts (seconds faster; the operator "
            "puts it on the model cache volume)",
            type=Path,
        ),
    )
    fused_norms: bool = field(
        default=False,
        metadata=serve_flag(
            "Qwen3 on CUDA: fuse RMSNorm's reduction too (faster; min cosine vs "
            "transformers bf16 0.99897 instead of 0.99903 on 4B, see BENCHMARKS.md)"
        ),
    )
    share_prefixes: bool = field(
        default=False,
        metadata=serve_flag(
            "Qwen3: inputs of a batch that begin alike (an instruction, a reranker's prompt "
            "and query) compute that prefix once; off until measured on a GPU"
        ),
    )
    prepare_before_ready: bool = field(
        default=False,
        metadata=serve_flag(
            "compile kernels and capture CUDA graphs before Ready, not after it between "
            "batches (a 4B worker's start on an H200: about 25 s instead of 10)"
        ),
    )
    drain_timeout_seconds: float = field(default=30.0, metadata=serve_flag(type=float))
    # Connections: see http/connections.py (spreading keep-alive clients) and the README.
    max_connection_age_seconds: float = field(
        default=5.0,
        metadata=serve_flag(
            "close a client connection between requests once it is this old, divided by the "
            "client connections this worker holds (so keep-alive clients spread over new "
            "replicas); 0: never",
            type=_non_negative,
        ),
    )
    max_connection_requests: int = field(
        default=4,
        metadata=serve_flag(
            "close a client connection after this many requests (jittered); 0: no limit",
            type=_non_negative_int,
        ),
    )
    keep_alive_timeout_seconds: int = field(
        default=120,
        metadata=serve_flag(
            "idle time before the worker closes a connection; above client pool expiry "
            "(httpx/openai 5 s, aiohttp 15 s, Go 90 s) so the client, not the server, ends it",
            type=_positive,
        ),
    )
    api_processes: int = field(  # HTTP processes sharing the port and the one engine process
        default=1,
        metadata=serve_flag(
            "HTTP processes sharing the port and the one engine process (parsing, "
            "tokenising and writing answers in parallel; vLLM's --api-server-count)",
            type=_positive,
        ),
    )
    log_level: str = field(
        default="info", metadata=serve_flag(choices=["debug", "info", "warning", "error"])
    )
    log_event_loop_stalls_ms: float = field(  # 0: off
        default=0.0,
        metadata=serve_flag(
            "log the HTTP event loop's stack whenever it is blocked longer than this "
            "(a diagnostic, beside the embedfleet_event_loop_lag_seconds histogram); 0: off",
            type=_non_negative,
        ),
    )


_NO_METADATA = serve_flag()


def _cli(setting: dataclasses.Field[Any]) -> Mapping[str, Any]:
    return setting.metadata or _NO_METADATA


def _switch(setting: dataclasses.Field[Any]) -> bool:
    return isinstance(setting.default, bool)


def _repeatable(setting: dataclasses.Field[Any]) -> bool:
    return isinstance(setting.default, tuple)


def _flag(setting: dataclasses.Field[Any]) -> str:
    return str(_cli(setting)["spelling"] or "--" + setting.name.replace("_", "-"))


def environment_name(setting: dataclasses.Field[Any]) -> str:
    """EMBEDFLEET_<FLAG>: `--max-batch-tokens` reads EMBEDFLEET_MAX_BATCH_TOKENS."""
    return ENV_PREFIX + _flag(setting).removeprefix("--").replace("-", "_").upper()


def environment_names() -> dict[str, str]:
    """Each variable the worker reads, to the setting it sets."""
    return {environment_name(s): s.name for s in dataclasses.fields(WorkerSettings)}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    for setting in dataclasses.fields(WorkerSettings):
        cli = _cli(setting)
        options: dict[str, Any] = {"dest": setting.name, "help": cli["help"]}
        if _switch(setting):
            options.update(action="store_true", default=setting.default)
        elif _repeatable(setting):  # `parse_settings` makes the list a tuple
            options.update(action="append", default=None)
        else:
            options.update(type=cli["type"], choices=cli["choices"], default=setting.default)
        parser.add_argument(_flag(setting), **options)


def environment_defaults(
    parser: argparse.ArgumentParser, environ: Mapping[str, str]
) -> dict[str, object]:
    """Flag defaults taken from EMBEDFLEET_* variables, converted by each setting's own type."""
    defaults: dict[str, object] = {}
    for setting in dataclasses.fields(WorkerSettings):
        name = environment_name(setting)
        if name not in environ:
            continue
        raw = environ[name]
        if _switch(setting):
            defaults[setting.name] = raw.strip().lower() in _TRUE
        elif _repeatable(setting):
            defaults[setting.name] = [n.strip() for n in raw.split(",") if n.strip()]
        else:
            convert = _cli(setting)["type"] or str
            try:
                defaults[setting.name] = convert(raw)
            except (ValueError, argparse.ArgumentTypeError) as error:
                parser.error(f"{name}={raw!r}: {error}")
    return defaults


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> WorkerSettings:
    parser = argparse.ArgumentParser(prog="embedfleet-worker serve")
    add_serve_arguments(parser)
    parser.set_defaults(**environment_defaults(parser, os.environ if environ is None else environ))
    args = vars(parser.parse_args(argv))
    for setting in dataclasses.fields(WorkerSettings):
        if _repeatable(setting):
            args[setting.name] = tuple(args[setting.name] or ())
    return WorkerSettings(**args)
