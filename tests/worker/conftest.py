"""Fixtures for the worker tests: real tokenizers, tiny random-weight checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.modelzoo import make_tiny_qwen3


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))
