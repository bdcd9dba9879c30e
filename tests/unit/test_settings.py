"""Worker settings: flags, EMBEDFLEET_* environment variables, and which one wins."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from embedfleet_worker.engine.executor import EngineConfig
from embedfleet_worker.settings import WorkerSettings, parse_settings


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, {}),
        (["--model", "/m", "--port", "9000"], {}, {"model": "/m", "port": 9000}),
        ([], {"EMBEDFLEET_MODEL": "Qwen/Qwen3-Embedding-4B", "EMBEDFLEET_REVISION": "v1"},
         {"model": "Qwen/Qwen3-Embedding-4B", "revision": "v1"}),
        (["--max-batch-tokens", "4096"], {"EMBEDFLEET_MAX_BATCH_TOKENS": "8192"},
         {"max_batch_tokens": 4096}),
        ([], {"EMBEDFLEET_MAX_BATCH_TOKENS": "8192"}, {"max_batch_tokens": 8192}),
        ([], {"EMBEDFLEET_SERVED_MODEL_NAME": "a, b"}, {"served_model_names": ("a", "b")}),
        (["--served-model-name", "x", "--served-model-name", "y"], {},
         {"served_model_names": ("x", "y")}),
        ([], {"EMBEDFLEET_API_KEY_FILE": "/k"}, {"api_key_file": Path("/k")}),
        ([], {"EMBEDFLEET_OFFLINE": "true"}, {"offline": True}),
        ([], {"EMBEDFLEET_DTYPE": "bfloat16"}, {"dtype": "bfloat16"}),
    ],
)  # fmt: skip
def test_parse_settings(
    argv: list[str], environ: dict[str, str], expected: dict[str, object]
) -> None:
    settings = parse_settings(argv, environ)
    for key, value in expected.items():
        assert getattr(settings, key) == value
    defaults = WorkerSettings()
    untouched = set(vars(defaults)) - set(expected)
    assert all(getattr(settings, k) == getattr(defaults, k) for k in untouched)


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--max-batch-tokens", "0"], {}),
        ([], {"EMBEDFLEET_MAX_BATCH_TOKENS": "lots"}),
        (["--dtype", "int4"], {}),
    ],
)
def test_bad_settings_exit_with_a_message(
    argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        parse_settings(argv, environ)
    assert raised.value.code == 2
    assert "error" in capsys.readouterr().err


def test_fused_norms_is_opt_in_by_flag_or_environment() -> None:
    assert parse_settings([], environ={}).fused_norms is False
    assert parse_settings(["--fused-norms"], environ={}).fused_norms is True
    assert parse_settings([], environ={"EMBEDFLEET_FUSED_NORMS": "1"}).fused_norms is True


def test_the_engine_configs_settings_are_the_workers() -> None:
    """EngineConfig's fields that are settings take their defaults from the one declaration,
    and `from_settings` their values; its own knobs keep their defaults."""
    shared = {f.name for f in fields(EngineConfig)} & {f.name for f in fields(WorkerSettings)}
    assert shared == {"max_batch_tokens", "max_batch_size", "max_queue_tokens"}
    assert all(getattr(EngineConfig(), n) == getattr(WorkerSettings(), n) for n in shared)
    settings = parse_settings(
        ["--max-batch-tokens", "4096", "--max-batch-size", "8"],
        environ={"EMBEDFLEET_MAX_QUEUE_TOKENS": "9999"},
    )
    assert EngineConfig.from_settings(settings) == EngineConfig(
        max_batch_tokens=4096, max_batch_size=8, max_queue_tokens=9999
    )
