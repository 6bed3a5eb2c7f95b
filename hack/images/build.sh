#!/usr/bin/env bash
# Builds Portcullis's two images without Docker and imports them into the local cluster's
# containerd: the release binaries, each in a single-layer OCI image with its shared libraries.
#
#   IMG        operator and agent image (entrypoint /portcullis)     [example.test/portcullis/portcullis:dev]
#   PROXY_IMG  proxy image (entrypoint /portcullis-proxy)            [example.test/portcullis/proxy:dev]
#   ECHO_IMG   with --e2e: the e2e backend (portcullis-echo)          [example.test/portcullis/echo:dev]
#
# Users with Docker build the same images from the Dockerfile (see hack/kind/).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
IMG=${IMG:-example.test/portcullis/portcullis:dev}
PROXY_IMG=${PROXY_IMG:-example.test/portcullis/proxy:dev}
ECHO_IMG=${ECHO_IMG:-example.test/portcullis/echo:dev}
CARGO=${CARGO:-cargo}
e2e=false
[ "${1:-}" = --e2e ] && e2e=true

cd "$ROOT"
echo "building release binaries"
packages=(-p portcullis-operator -p portcullis-dataplane)
binaries=(portcullis portcullis-proxy)
if $e2e; then packages+=(-p portcullis-e2e); binaries+=(portcullis-echo); fi
"$CARGO" build --release --locked "${packages[@]}" --bins
target=${CARGO_TARGET_DIR:-$ROOT/target}/release
# The release profile keeps debug info for profiling; images carry symbols only.
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
for binary in "${binaries[@]}"; do
  objcopy --strip-debug "$target/$binary" "$staging/$binary"
done
hack/local-cluster/import-image.sh "$IMG" "$staging/portcullis"
# The proxy's system trust store (BackendTLSPolicy wellKnownCACertificates: System), as the
# Dockerfile's distroless base carries it.
ca_bundle=/etc/ssl/certs/ca-certificates.crt
ca_files=()
[ -f "$ca_bundle" ] && ca_files=(-f "$ca_bundle:$ca_bundle:644")
hack/local-cluster/import-image.sh "${ca_files[@]}" "$PROXY_IMG" "$staging/portcullis-proxy"
if $e2e; then hack/local-cluster/import-image.sh "$ECHO_IMG" "$staging/portcullis-echo"; fi
