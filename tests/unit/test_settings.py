"""Worker settings: flags, EMBEDFLEET_* environment variables, and which one wins."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from embedfleet_operator.crd import spec_schema
from embedfleet_operator.resources import build_deployment
from embedfleet_operator.spec import parse_service
from embedfleet_worker.engine.executor import EngineConfig
from embedfleet_worker.settings import (
    ENV_PREFIX,
    WorkerSettings,
    environment_names,
    parse_settings,
)


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
    assert shared == {
        "max_batch_tokens", "max_batch_size", "max_queue_tokens", "prepare_before_ready"
    }  # fmt: skip
    assert all(getattr(EngineConfig(), n) == getattr(WorkerSettings(), n) for n in shared)
    settings = parse_settings(
        ["--max-batch-tokens", "4096", "--max-batch-size", "8"],
        environ={"EMBEDFLEET_MAX_QUEUE_TOKENS": "9999"},
    )
    assert EngineConfig.from_settings(settings) == EngineConfig(
        max_batch_tokens=4096, max_batch_size=8, max_queue_tokens=9999
    )


# An EmbeddingService with every engine field (and the model's) set to a value that is not
# its default, so a variable the worker ignored or misread would show.
ENGINE: dict[str, Any] = {
    "maxBatchTokens": 4096,
    "maxBatchSize": 64,
    "maxInputTokens": 512,
    "maxQueueTokens": 65536,
    "maxInputsPerRequest": 100,
    "defaultInstruction": "Given a web search query, retrieve relevant passages",
    "drainTimeoutSeconds": 45,
    "maxConnectionAgeSeconds": 2.5,
    "maxConnectionRequests": 100,
}
SERVICE: dict[str, Any] = {
    "apiVersion": "embedfleet.dev/v1alpha1",
    "kind": "EmbeddingService",
    "metadata": {"name": "qwen3-4b", "namespace": "ml", "uid": "u-1"},
    "spec": {
        "model": {
            "name": "Qwen/Qwen3-Embedding-4B",
            "revision": "v1.0",
            "dtype": "float16",
            "task": "embed",
        },
        "resources": {"gpus": 1},
        "engine": ENGINE,
        "apiKeySecretRef": {"name": "embedding-keys", "key": "token"},
    },
}
# What the worker should make of the Deployment built for SERVICE: one entry per setting the
# operator sets (the test below fails on a variable this does not name).
INTENDED: dict[str, Any] = {
    "model": "Qwen/Qwen3-Embedding-4B",
    "revision": "v1.0",
    "dtype": "float16",
    "task": "embed",
    "device": "cuda",
    "host": "0.0.0.0",
    "port": 8000,  # also the worker's default: the one setting here that does not tell
    "max_batch_tokens": 4096,
    "max_batch_size": 64,
    "max_input_tokens": 512,
    "max_queue_tokens": 65536,
    "max_inputs_per_request": 100,
    "default_instruction": "Given a web search query, retrieve relevant passages",
    "drain_timeout_seconds": 45.0,
    "max_connection_age_seconds": 2.5,
    "max_connection_requests": 100,
    "served_model_names": ("Qwen/Qwen3-Embedding-4B",),
    "model_cache_dir": Path("/models"),
    "tokenizer_cache_dir": Path("/models/.compile-cache/tokenizers"),
    "api_key_file": Path("/etc/embedfleet/api-key/token"),
}


def operator_environment(service: dict[str, Any]) -> dict[str, str]:
    """The worker container's environment in the Deployment the operator builds for
    `service` (the one place this test knows the operator's builder)."""
    deployment = build_deployment(parse_service(service), worker_image="x")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = [(e["name"], e["value"]) for e in container["env"]]
    assert len(dict(env)) == len(env), "a variable set twice"
    return dict(env)


def test_the_sample_sets_every_engine_field_to_a_value_not_its_default() -> None:
    engine = spec_schema()["properties"]["engine"]["properties"]
    assert set(ENGINE) == set(engine)
    assert [k for k, v in ENGINE.items() if v == engine[k].get("default")] == []


def test_every_variable_the_operator_writes_reaches_the_worker_with_its_value() -> None:
    environ = operator_environment(SERVICE)
    ours = {name for name in environ if name.startswith(ENV_PREFIX)}
    known = environment_names()
    assert sorted(ours - set(known)) == []  # the worker would ignore them
    assert {known[name] for name in ours} == set(INTENDED)
    settings = parse_settings([], environ)
    assert {k: getattr(settings, k) for k in INTENDED} == INTENDED
    defaults = WorkerSettings()
    assert all(
        getattr(settings, k) == getattr(defaults, k) for k in set(known.values()) - set(INTENDED)
    )


def test_a_worker_started_by_hand_has_the_crds_engine_defaults() -> None:
    """The operator always passes the engine settings, but `embedfleet-worker serve` started
    by hand uses its own defaults: they are checked against the CRD's (spec.py), so the two
    never drift apart (neither package imports the other at run time)."""
    from embedfleet_operator.spec import EngineSpec

    worker = WorkerSettings()
    engine = EngineSpec()
    shared = {f.name for f in fields(EngineSpec)} & {f.name for f in fields(WorkerSettings)}
    assert {"max_batch_tokens", "max_batch_size", "max_queue_tokens"} <= shared
    for name in sorted(shared):
        assert getattr(worker, name) == getattr(engine, name), name
