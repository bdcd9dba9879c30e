#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kwok from
# their Go modules into a cache outside the repo, once per pinned version set; and, as a
# separate step with its own folder, helm (so a new Helm pin never rebuilds the control plane).
# Usage: build-binaries.sh            -> builds both if needed, prints the control-plane folder
#        build-binaries.sh helm       -> builds helm if needed, prints the folder holding helm
# KUBEBUILDER_ASSETS=<dir> skips a build when that folder already has the binaries (or helm).
# stdout is exactly one line (the folder); progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

mode="${1:-controlplane}"
case "$mode" in
    controlplane | helm) ;;
    *) echo "usage: $0 [helm]" >&2; exit 2 ;;
esac

binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

have_all() {
    local dir="$1"
    for b in "${binaries[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
}

log() { echo "[build-binaries] $*" >&2; }
work="" helm_work=""
trap 'rm -rf "$work" "$helm_work"' EXIT
cache_root="${EMBEDFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/embedfleet}"

# --- helm, independent of the control plane: its own folder, its own wrapper module.
# Sets helm_dir to KUBEBUILDER_ASSETS when that has an executable helm, else to the cache
# folder, building helm there the first time.
ensure_helm() {
    if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/helm" ]]; then
        helm_dir="$KUBEBUILDER_ASSETS"
        return 0
    fi
    helm_dir="$cache_root/bin/helm-${HELM_VERSION}"
    if [[ -x "$helm_dir/helm" ]]; then
        return 0
    fi
    command -v go >/dev/null || { echo "go (1.26+) is required to build helm" >&2; exit 1; }
    log "helm $HELM_VERSION"
    helm_work="$(mktemp -d)"
    rm -rf "$helm_dir.partial"
    mkdir -p "$helm_dir.partial"
    (
        cd "$helm_work"
        export GOFLAGS="-buildvcs=false -trimpath" CGO_ENABLED=0
        go mod init embedfleet.dev/helm >/dev/null 2>&1
        cat > tools.go <<'GO'
//go:build tools

package tools

import _ "helm.sh/helm/v4/cmd/helm"
GO
        go get "helm.sh/helm/v4@$HELM_VERSION" >&2
        go mod tidy >&2
        # The variables helm's Makefile stamps for a release tag (gitCommit isn't known from
        # the module proxy, so it stays empty; metadata empty means a release, not "unreleased").
        local pkg=helm.sh/helm/v4/internal/version
        go build -trimpath -buildvcs=false \
            -ldflags "-s -w -X $pkg.version=$HELM_VERSION -X $pkg.metadata= -X $pkg.gitTreeState=clean" \
            -o "$helm_dir.partial/helm" helm.sh/helm/v4/cmd/helm
    )
    [[ -x "$helm_dir.partial/helm" ]]
    rm -rf "$helm_dir"
    mv "$helm_dir.partial" "$helm_dir"
    log "built helm into $helm_dir"
}

if [[ "$mode" == helm ]]; then
    ensure_helm
    echo "$helm_dir"
    exit 0
fi

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && have_all "$KUBEBUILDER_ASSETS"; then
    ensure_helm
    echo "$KUBEBUILDER_ASSETS"
    exit 0
fi

dest="$cache_root/bin/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
if have_all "$dest"; then
    ensure_helm
    echo "$dest"
    exit 0
fi

command -v go >/dev/null || { echo "go (1.24+) is required to build the control plane" >&2; exit 1; }
work="$(mktemp -d)"
mkdir -p "$dest.partial"
export GOFLAGS="-buildvcs=false -trimpath" CGO_ENABLED=0

k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
k8s_patch="${K8S_VERSION##*.}"
staging_version="v0.${k8s_minor}.${k8s_patch}"

# --- Kubernetes: a wrapper module requiring k8s.io/kubernetes, staging modules replaced by
# their released tags (the upstream go.mod points them at ./staging, which a module can't use).
log "kubernetes $K8S_VERSION (staging $staging_version)"
mkdir -p "$work/kube"
(
    cd "$work/kube"
    go mod init embedfleet.dev/controlplane >/dev/null 2>&1
    upstream_mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    {
        echo "require k8s.io/kubernetes $K8S_VERSION"
        sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 '"$staging_version"'#p' "$upstream_mod"
    } >> go.mod
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    go mod tidy -e >&2
    ldflags="-s -w"
    for var in gitVersion=$K8S_VERSION gitMajor=1 gitMinor=$k8s_minor gitTreeState=clean \
        buildDate=1970-01-01T00:00:00Z gitCommit=0000000000000000000000000000000000000000; do
        ldflags+=" -X k8s.io/component-base/version.$var -X k8s.io/client-go/pkg/version.$var"
    done
    go build -ldflags "$ldflags" -o "$dest.partial/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
)

# --- etcd, through etcdmain in its own wrapper module (its dependency set differs from k8s's).
log "etcd $ETCD_VERSION"
mkdir -p "$work/etcd"
(
    cd "$work/etcd"
    go mod init embedfleet.dev/etcd >/dev/null 2>&1
    cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
    go mod tidy >&2
    go build -ldflags "-s -w" -o "$dest.partial/etcd" .
)

# --- kwok: simulates nodes and moves scheduled pods to Running.
log "kwok $KWOK_VERSION"
mkdir -p "$work/kwok"
(
    cd "$work/kwok"
    go mod init embedfleet.dev/kwok >/dev/null 2>&1
    cat > tools.go <<'GO'
//go:build tools

package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
GO
    go get "sigs.k8s.io/kwok@$KWOK_VERSION" >&2
    go mod tidy -e >&2
    go build -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
        -o "$dest.partial/kwok" sigs.k8s.io/kwok/cmd/kwok
)

rm -rf "$dest"
mv "$dest.partial" "$dest"
have_all "$dest"
log "built into $dest"
ensure_helm
echo "$dest"
