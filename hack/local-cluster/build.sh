#!/usr/bin/env bash
# Builds the Kubernetes server binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl) and etcd from the Go module proxy into
# $CACHE/k8s-$K8S_VERSION/bin. Reuses the cache when every binary is present.
#
# k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the staging modules with
# local paths), so a wrapper module pins each staging module to v0.<minor>.<patch>; the
# replace lines are generated from upstream's go.mod, never hard-coded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"

OUT=$CACHE/k8s-$K8S_VERSION/bin
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd)
missing=()
for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "==> Kubernetes $K8S_VERSION binaries cached in $OUT"
  exit 0
fi

command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
free_kb=$(df -Pk "$CACHE" 2>/dev/null | awk 'NR==2 {print $4}' || echo 0)
mkdir -p "$OUT"
free_kb=$(df -Pk "$CACHE" | awk 'NR==2 {print $4}')
if [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
  echo "need at least 8 GiB free under $CACHE to build Kubernetes (have $((free_kb / 1024)) MiB)" >&2
  exit 1
fi

export GOTOOLCHAIN=local
export GOFLAGS=-mod=mod
start=$(date +%s)
log() { echo "==> [$(( $(date +%s) - start ))s] $*"; }

build_kubernetes() {
  local work=$CACHE/k8s-$K8S_VERSION/build
  mkdir -p "$work"
  cd "$work"
  log "downloading k8s.io/kubernetes@$K8S_VERSION"
  local upstream
  upstream=$(GOFLAGS= go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
  [ -f "$upstream" ] || { echo "could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
  local staging="v0.${K8S_VERSION#v1.}"
  {
    echo "module local/portcullis-k8s-build"
    echo
    awk '$1=="go"{print; exit}' "$upstream"
    grep '^godebug' "$upstream" || true
    echo
    sed -n "s#^[[:space:]]*\(k8s\.io/[A-Za-z0-9_.-]*\) => \./staging/src/.*#replace \1 => \1 $staging#p" "$upstream"
  } > go.mod
  log "resolving dependencies"
  go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" >/dev/null
  local minor ldflags
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ldflags="-s -w"
  for kv in "gitVersion=$K8S_VERSION" gitMajor=1 "gitMinor=$minor" gitTreeState=clean \
            "buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; do
    ldflags="$ldflags -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl (this is the long part)"
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$OUT/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl
  log "building kubelet"
  go build -trimpath -ldflags "$ldflags" -o "$OUT/" k8s.io/kubernetes/cmd/kubelet
}

build_etcd() {
  local work=$CACHE/etcd-$ETCD_VERSION/build
  mkdir -p "$work"
  cd "$work"
  [ -f go.mod ] || printf 'module local/portcullis-etcd-build\n\ngo 1.24\n' > go.mod
  log "building etcd $ETCD_VERSION"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
}

for b in "${missing[@]}"; do
  case $b in
    etcd) build_etcd ;;
    *) [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kubelet" ] && [ -x "$OUT/kubectl" ] \
         && [ -x "$OUT/kube-proxy" ] && [ -x "$OUT/kube-scheduler" ] && [ -x "$OUT/kube-controller-manager" ] \
         || build_kubernetes ;;
  esac
done
"$OUT/kube-apiserver" --version
"$OUT/etcd" --version | head -1
log "done: $OUT"
