"""The tokenizer cache (model/tokenizer_cache.py): a second start reads the tokenizer the first
one built, without importing transformers, and encodes exactly as transformers' tokenizer does;
an entry follows the tokenizer files it came from; a torn entry or an unwritable folder costs
time, never a wrong token or a failed start."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.model.loader import ModelSpec, load_encoder
from tests.modelzoo import minilm_dir

TEXTS = [
    "A man is eating food.",
    "naïve café — 東京タワー 🚀",
    "  leading and trailing spaces  ",
    "<|endoftext|> in the middle <|endoftext|>",
    "Long " + "and winding " * 150 + "road.",
]


@pytest.fixture(scope="module")
def folders(tiny_qwen3_dir: Path) -> dict[str, Path]:
    return {"minilm": minilm_dir(), "qwen3": tiny_qwen3_dir}


@pytest.mark.parametrize("model", ["minilm", "qwen3"])
@pytest.mark.parametrize("instruction", [None, "Given a question, find passages that answer it"])
def test_a_cached_tokenizer_encodes_as_transformers_does(
    folders: dict[str, Path], tmp_path: Path, model: str, instruction: str | None
) -> None:
    spec = ModelSpec(model=str(folders[model]), tokenizer_cache_dir=tmp_path)
    built = load_encoder(spec)  # transformers; writes the entry
    assert type(built.tokenizer).__module__.startswith("transformers")
    assert len(list(tmp_path.glob("*.json"))) == 1
    cached = load_encoder(spec)
    assert type(cached.tokenizer).__module__ == "tokenizers"
    assert cached.encoder.template == built.encoder.template
    options = EmbedOptions(instruction=instruction, truncate=True)
    assert cached.encoder.encode(TEXTS, options) == built.encoder.encode(TEXTS, options)
    uncached = load_encoder(ModelSpec(model=str(folders[model])))
    assert uncached.encoder.encode(TEXTS, options) == built.encoder.encode(TEXTS, options)


def test_a_second_start_does_not_import_transformers(tmp_path: Path) -> None:
    program = (
        "import sys; from pathlib import Path;"
        "from embedfleet_worker.model.loader import ModelSpec, load_encoder;"
        f"load_encoder(ModelSpec(model={str(minilm_dir())!r},"
        " tokenizer_cache_dir=Path(sys.argv[1])));"
        "print('transformers' in sys.modules)"
    )  # fmt: skip
    runs = [
        subprocess.run(
            [sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True,
            check=True, timeout=300,
        ).stdout.strip()
        for _ in range(2)
    ]  # fmt: skip
    assert runs == ["True", "False"]


def test_an_entry_follows_the_tokenizer_files(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(minilm_dir(), model)
    cache = tmp_path / "cache"
    spec = ModelSpec(model=str(model), tokenizer_cache_dir=cache)
    load_encoder(spec)
    config = model / "tokenizer_config.json"
    changed = json.loads(config.read_text())
    changed["do_lower_case"] = not changed.get("do_lower_case", True)
    config.write_text(json.dumps(changed))
    load_encoder(spec)
    assert len(list(cache.glob("*.json"))) == 2  # a new key: the old entry is not reused


def test_a_torn_entry_is_built_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = ModelSpec(model=str(minilm_dir()), tokenizer_cache_dir=tmp_path)
    good = load_encoder(spec).encoder.encode(TEXTS, EmbedOptions(truncate=True))
    (entry,) = tmp_path.glob("*.json")
    entry.write_text(entry.read_text()[:1000])
    with caplog.at_level(logging.WARNING, logger="embedfleet.worker"):
        again = load_encoder(spec)
    assert "unreadable tokenizer cache entry" in caplog.text
    assert type(again.tokenizer).__module__.startswith("transformers")
    assert again.encoder.encode(TEXTS, EmbedOptions(truncate=True)) == good
    assert type(load_encoder(spec).tokenizer).__module__ == "tokenizers"  # written over


def test_an_unwritable_folder_only_costs_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder would go")
    spec = ModelSpec(model=str(minilm_dir()), tokenizer_cache_dir=blocker / "tokenizers")
    with caplog.at_level(logging.WARNING, logger="embedfleet.worker"):
        loaded = load_encoder(spec)
    assert "could not write the tokenizer cache" in caplog.text
    assert loaded.encoder.encode(["works"], EmbedOptions())
