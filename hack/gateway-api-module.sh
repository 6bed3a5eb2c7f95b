#!/usr/bin/env bash
# Prints the directory of the pinned sigs.k8s.io/gateway-api Go module, downloading it into the
# Go module cache when needed. Shared by code generation, CRD installation and conformance.
set -euo pipefail
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.6.1}
command -v go >/dev/null || { echo "go is required (Go 1.22 or newer)" >&2; exit 1; }
json=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { echo "could not download sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION: $json" >&2; exit 1; }
echo "$dir"
