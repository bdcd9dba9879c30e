"""The two import packages load, expose their versions and console entry points, and the
operator does not drag in torch (its image has none)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["embedfleet_operator", "embedfleet_worker"])
def test_package_imports_and_has_a_version(package: str) -> None:
    module = __import__(package)
    assert module.__version__.count(".") == 2


@pytest.mark.parametrize(
    ("module", "prog"),
    [
        ("embedfleet_operator.cli", "embedfleet-operator"),
        ("embedfleet_worker.cli", "embedfleet-worker"),
    ],
)
def test_cli_reports_its_version(module: str, prog: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import sys, {module} as m; sys.exit(m.main(['--version']))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith(prog)


def test_operator_import_does_not_load_torch() -> None:
    code = (
        "import sys, embedfleet_operator.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'embedfleet_worker') if m in sys.modules]\n"
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
