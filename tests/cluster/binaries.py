"""Locates (building once if needed) the control-plane binaries and helm pinned in versions.env."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-binaries.sh"
REQUIRED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)


def pinned_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key] = value
    return versions


def binaries_dir() -> Path:
    """The folder with all REQUIRED binaries: KUBEBUILDER_ASSETS when it has them, else the
    cache, built by build-binaries.sh the first time (minutes; later calls return at once)."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and all(os.access(Path(assets) / name, os.X_OK) for name in REQUIRED):
        return Path(assets)
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    )
    folder = Path(result.stdout.strip().splitlines()[-1])
    missing = [name for name in REQUIRED if not os.access(folder / name, os.X_OK)]
    if missing:
        raise RuntimeError(f"control-plane binaries missing from {folder}: {missing}")
    return folder


def helm_path() -> Path:
    """The helm binary: KUBEBUILDER_ASSETS/helm when executable, else the cache's, built by
    `build-binaries.sh helm` the first time (minutes; later calls return at once)."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and os.access(Path(assets) / "helm", os.X_OK):
        return Path(assets) / "helm"
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "helm"], check=False, stdout=subprocess.PIPE, text=True
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"{BUILD_SCRIPT.name} helm failed (exit {result.returncode}); see its stderr above"
        )
    helm = Path(lines[-1]) / "helm"
    if not os.access(helm, os.X_OK):
        raise RuntimeError(f"helm {pinned_versions().get('HELM_VERSION')} missing: no {helm}")
    return helm
