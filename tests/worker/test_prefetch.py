"""`embedfleet-worker prefetch` against a loopback hub (tests/cluster/hub.py) serving the
offline MiniLM folder over real HTTP, one copy open and one gated: the files land in the
hub-cache layout the worker loads offline, a second run fetches nothing, and a missing or
wrong token fails with the hub's 401 in one clear line, the token in no output."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedfleet_worker.model.files import describe_model, resolve_model_dir
from tests.cluster.hub import HubRepo, LoopbackHub
from tests.modelzoo import minilm_dir

TOKEN = f"hf_loopback_{uuid.uuid4().hex}"
OPEN, GATED = "acme/minilm", "acme/gated-minilm"
REFUSED = 3  # the exit code the operator's Job fails on at once


@pytest.fixture(scope="module")
def hub() -> Iterator[LoopbackHub]:
    repos = {OPEN: HubRepo(OPEN, minilm_dir()), GATED: HubRepo(GATED, minilm_dir(), gated=True)}
    with LoopbackHub(repos, token=TOKEN) as running:
        yield running


def prefetch(
    hub: LoopbackHub, tmp_path: Path, model: str, *extra: str, token: str | None = TOKEN
) -> tuple[int, str, str]:
    """Runs the CLI as a pod would; (exit code, its output, the termination log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0",
               EMBEDFLEET_TERMINATION_LOG=str(tmp_path / "termination-log"))  # fmt: skip
    if token is not None:
        env["HF_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-m", "embedfleet_worker.cli", "prefetch", "--model", model,
         "--cache-dir", str(tmp_path / "cache"), *extra],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    log = tmp_path / "termination-log"
    return done.returncode, done.stdout + done.stderr, log.read_text() if log.exists() else ""


def test_a_gated_model_lands_in_the_hub_cache_and_loads_offline(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    code, output, summary = prefetch(hub, tmp_path, GATED)
    assert code == 0, output
    repo = tmp_path / "cache" / "models--acme--gated-minilm"
    commit = hub.commit(GATED)
    assert (repo / "refs" / "main").read_text() == commit
    snapshot = repo / "snapshots" / commit
    fetched = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    assert "model.safetensors" in fetched
    assert "1_Pooling/config.json" in fetched
    assert "README.md" not in fetched  # only what a worker reads
    assert (snapshot / "model.safetensors").read_bytes() == (
        minilm_dir() / "model.safetensors"
    ).read_bytes()
    assert summary.startswith(f"prefetched {len(fetched)} files")
    assert commit in summary
    assert summary.strip() == output.strip().splitlines()[-1]
    assert TOKEN not in output + summary

    # The worker's loader reads it offline, without a request to the hub.
    asked = len(hub.requests)
    loaded = resolve_model_dir(GATED, cache_dir=tmp_path / "cache", offline=True)
    assert loaded == snapshot
    assert describe_model(loaded).hidden_size == 384
    assert len(hub.requests) == asked

    # Fetched once: a second run downloads nothing.
    code, output, summary = prefetch(hub, tmp_path, GATED)
    assert code == 0, output
    assert "(0 downloaded)" in summary
    assert not [r for r in hub.requests[asked:] if "/resolve/" in r.path and r.method == "GET"]


@pytest.mark.parametrize(
    ("token", "said"),
    [
        (None, "is restricted"),  # no token: the hub's gated-repo answer
        ("hf_wrong_" + uuid.uuid4().hex, "Invalid credentials"),
    ],
)
def test_a_missing_or_wrong_token_fails_with_the_401_and_never_shows_the_token(
    hub: LoopbackHub, tmp_path: Path, token: str | None, said: str
) -> None:
    code, output, summary = prefetch(hub, tmp_path, GATED, token=token)
    assert code == REFUSED, output
    assert "HTTP 401" in summary
    assert said in summary
    assert "hubTokenSecret" in summary
    assert summary.strip() == output.strip().splitlines()[-1]  # one line, the reason
    assert "Traceback" not in output
    for secret in (TOKEN, token):
        assert secret is None or secret not in output + summary
    assert not list((tmp_path / "cache").glob("models--*/snapshots/*/*"))


def test_an_open_model_needs_no_token_and_a_missing_revision_is_refused(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    code, output, _summary = prefetch(hub, tmp_path, OPEN, token=None)
    assert code == 0, output
    code, output, summary = prefetch(hub, tmp_path, OPEN, "--revision", "v9", token=None)
    assert code == REFUSED, output
    assert "HTTP 404" in summary
    assert "no such repo or revision" in summary
