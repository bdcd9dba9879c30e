"""A model's tokenizer as the worker uses it, kept on disk for the next start: the Rust
tokenizer transformers built from the model folder, serialised, and the special-token template
probed from it (tokenization.probe_template).

The HTTP process tokenises with that Rust tokenizer alone, yet building it meant importing
transformers and constructing its tokenizer: 6.5-9.4 s of a 4B worker's 12-14 s start on the
H200 machine (BENCHMARKS.md), the longest part once the weights loaded in under a second. A
later start, on any pod sharing the cache volume, reads it back with the `tokenizers` library
in well under a second. An entry is keyed by the model's descriptor files (tokenizer files
included), the pooling, and the versions of transformers and tokenizers, so it never outlives
what it was built from; an unreadable entry is ignored and built again."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from embedfleet_worker.engine.pooling import PoolingMode
from embedfleet_worker.engine.tokenization import SequenceTemplate
from embedfleet_worker.model.files import descriptor_digest

log = logging.getLogger("embedfleet.worker")

FORMAT = 1  # bump when what is stored, or how it is used, changes


def cache_key(model_dir: Path, pooling: PoolingMode) -> str:
    digest = descriptor_digest(model_dir)
    versions = [_version(name) for name in ("transformers", "tokenizers")]
    digest.update(json.dumps([FORMAT, pooling.value, *versions]).encode())
    return digest.hexdigest()[:32]


def load(folder: Path, key: str) -> tuple[Any, SequenceTemplate] | None:
    """The Rust tokenizer and template stored under `key`, or None."""
    path = folder / f"{key}.json"
    try:
        entry = json.loads(path.read_text())
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(entry["tokenizer"])
        template = SequenceTemplate(
            tuple(entry["prefix"]), tuple(entry["suffix"]), entry["terminator"]
        )
    except FileNotFoundError:
        return None
    except Exception as error:  # a torn or foreign file: built again, and written over
        log.warning("ignoring an unreadable tokenizer cache entry", extra={"path": str(path),
                    "error": f"{type(error).__name__}: {error}"})  # fmt: skip
        return None
    return tokenizer, template


def store(folder: Path, key: str, tokenizer: Any, template: SequenceTemplate) -> None:
    """Writes the entry atomically (pods sharing the volume may write it at once); a failure
    is logged, never raised: the cache only saves time."""
    entry = {
        "tokenizer": tokenizer.to_str(),
        "prefix": list(template.prefix),
        "suffix": list(template.suffix),
        "terminator": template.terminator,
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as out:
            json.dump(entry, out)
        os.replace(out.name, folder / f"{key}.json")
    except OSError as error:
        log.warning("could not write the tokenizer cache", extra={"folder": str(folder),
                    "error": f"{type(error).__name__}: {error}"})  # fmt: skip


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"
