"""`embedfleet-worker prefetch`: fetch a hub model into the cache volume once (the operator's
prefetch Job runs it), in the hub-cache layout `serve` reads offline (model/files.py). The
token comes only from HF_TOKEN, which huggingface_hub reads itself; nothing here prints it,
and any message that might echo it has it masked. The last line, also written to the
termination log for the operator's status, says what was fetched or why not."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from embedfleet_worker.model.files import HUB_PATTERNS

# An answer no retry changes (the token, a missing repo or revision): the Job's
# podFailurePolicy fails at once on it instead of backing off (operator prefetch.py).
REFUSED = 3
FAILED = 1


@dataclass(frozen=True)
class Fetched:
    snapshot: Path
    files: int
    bytes: int  # the snapshot's size
    downloaded: int  # bytes new in the cache (0: it was all there)
    seconds: float

    def summary(self) -> str:
        return (
            f"prefetched {self.files} files, {self.bytes} bytes ({self.downloaded} downloaded) "
            f"in {self.seconds:.1f} s: {self.snapshot.parent.parent.name} "
            f"commit {self.snapshot.name}"
        )


def _mask(text: str) -> str:
    token = os.environ.get("HF_TOKEN") or ""
    return text.replace(token, "***") if len(token) >= 4 else text


def _blob_bytes(folder: Path) -> int:
    blobs = folder / "blobs"
    return sum(f.stat().st_size for f in blobs.iterdir() if f.is_file()) if blobs.is_dir() else 0


def fetch(model: str, revision: str | None, cache_dir: Path, out: TextIO) -> Fetched:
    """Downloads what a worker loads of `model` at `revision` into `cache_dir`."""
    # A pod's log is no terminal: our own lines say how it goes (read when the hub imports).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from huggingface_hub import constants, snapshot_download

    started = time.monotonic()
    repo = cache_dir / ("models--" + model.replace("/", "--"))
    before = _blob_bytes(repo)
    print(f"prefetch: {model} at {revision or 'main'} from {constants.ENDPOINT} "
          f"into {cache_dir}", file=out, flush=True)  # fmt: skip
    snapshot = Path(
        snapshot_download(
            model, revision=revision, cache_dir=cache_dir, allow_patterns=list(HUB_PATTERNS)
        )
    )
    files = sorted(p for p in snapshot.rglob("*") if p.is_file())
    sizes = [p.stat().st_size for p in files]
    for path, size in zip(files, sizes, strict=True):
        print(f"  {path.relative_to(snapshot)}: {size} bytes", file=out, flush=True)
    return Fetched(snapshot, len(files), sum(sizes), _blob_bytes(repo) - before,
                   time.monotonic() - started)  # fmt: skip


def failure(error: Exception, model: str) -> tuple[int, str]:
    """The exit code and the one-line reason for a failed fetch."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        said = error.server_message or str(error).splitlines()[0]
        hint = {401: "check spec.model.hubTokenSecret (missing or wrong token)",
                403: "the token may not read this repo (accept its terms on the hub?)",
                404: "no such repo or revision"}.get(status)  # fmt: skip
        if hint is not None:
            return REFUSED, f"the hub refused {model}: HTTP {status} {said}; {hint}"
        return FAILED, f"the hub failed for {model}: HTTP {status} {said}"
    if isinstance(error, LocalEntryNotFoundError):
        reason = str(error.__cause__ or error).splitlines()[0]
        return FAILED, f"the hub could not be reached for {model}: {reason}"
    return FAILED, f"prefetch of {model} failed: {type(error).__name__}: {error}"


def _record(path: Path | None, line: str, out: TextIO) -> None:
    print(line, file=out, flush=True)
    if path is None:
        return
    try:
        path.write_text(line[-4000:] + "\n")  # a kubelet keeps at most 4096 bytes of it
    except OSError as error:
        print(f"(termination log {path} not written: {error})", file=out, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedfleet-worker prefetch",
        description="Fetch a hub model into a cache folder once (token: HF_TOKEN; hub: "
        "HF_ENDPOINT), in the layout `serve --offline --model-cache-dir` reads.",
    )
    parser.add_argument("--model", required=True, help="hub id, e.g. Qwen/Qwen3-Embedding-4B")
    parser.add_argument("--revision", help="branch, tag or commit (default: main)")
    parser.add_argument("--cache-dir", type=Path, required=True, help="e.g. /models")
    parser.add_argument(
        "--termination-log", type=Path,
        default=Path(os.environ["EMBEDFLEET_TERMINATION_LOG"])
        if os.environ.get("EMBEDFLEET_TERMINATION_LOG") else None,
        help="file for the one-line outcome (a pod's terminationMessagePath)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    try:
        fetched = fetch(args.model, args.revision, args.cache_dir, out)
    except Exception as error:  # every failure ends as one line and an exit code
        code, line = failure(error, args.model)
        _record(args.termination_log, _mask(line), out)
        return code
    _record(args.termination_log, _mask(fetched.summary()), out)
    return 0
