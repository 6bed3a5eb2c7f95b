#!/usr/bin/env bash
# Builds Portcullis's two images without Docker and imports them into the local cluster's
# containerd: the release binaries, each in a single-layer OCI image with its shared libraries.
#
#   IMG        operator and agent image (entrypoint /portcullis)     [example.test/portcullis/portcullis:dev]
#   PROXY_IMG  proxy image (entrypoint /portcullis-proxy)            [example.test/portcullis/proxy:dev]
#
# Users with Docker build the same images from the Dockerfile (see hack/kind/).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
IMG=${IMG:-example.test/portcullis/portcullis:dev}
PROXY_IMG=${PROXY_IMG:-example.test/portcullis/proxy:dev}
CARGO=${CARGO:-cargo}

cd "$ROOT"
echo "building release binaries"
"$CARGO" build --release --locked -p portcullis-operator -p portcullis-dataplane --bins
target=${CARGO_TARGET_DIR:-$ROOT/target}/release
# The release profile keeps debug info for profiling; images carry symbols only.
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
for binary in portcullis portcullis-proxy; do
  objcopy --strip-debug "$target/$binary" "$staging/$binary"
done
hack/local-cluster/import-image.sh "$IMG" "$staging/portcullis"
hack/local-cluster/import-image.sh "$PROXY_IMG" "$staging/portcullis-proxy"
