"""helm is built from its Go module at the version pinned in versions.env, stamped with it."""

from __future__ import annotations

import os
import subprocess

from tests.cluster.binaries import helm_path, pinned_versions


def test_helm_binary_reports_the_pinned_version() -> None:
    helm = helm_path()
    assert helm.is_file()
    assert os.access(helm, os.X_OK)
    result = subprocess.run(
        [str(helm), "version", "--template", "{{.Version}}"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == pinned_versions()["HELM_VERSION"]
