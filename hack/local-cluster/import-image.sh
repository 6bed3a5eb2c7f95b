#!/usr/bin/env bash
# Wraps one binary into a single-layer OCI image and imports it into the local cluster's containerd
# (namespace k8s.io), so pods can use it without a registry.
#
# usage: import-image.sh [-a ALIAS]... [-f SRC:DST[:MODE]]... NAME:TAG BINARY [ARGS...]
#
#   NAME:TAG  fully qualified image name, exactly as pod specs will write it
#             (e.g. example.test/portcullis/proxy:dev); short names like "proxy:dev" do not resolve
#             through the CRI, so they are refused
#   BINARY    stored as /<basename of BINARY>; the entrypoint is that path followed by ARGS
#   -a ALIAS  also tag the image as ALIAS (repeatable; e.g. every name a manifest uses)
#   -f SPEC   add another file (repeatable; same SRC:DST[:OCTALMODE] syntax as mkoci.py)
#
# A dynamically linked BINARY (e.g. a Rust x86_64-unknown-linux-gnu build) gets its shared-library
# closure from `ldd` copied in at the same paths, so it runs in the otherwise empty image.
# Re-importing the same name replaces the image. Pods with imagePullPolicy IfNotPresent (the default
# for non-latest tags) or Never never try to pull it.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

usage() { sed -n '5,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
aliases=() extra=()
while getopts "a:f:h" opt; do
  case $opt in
    a) aliases+=("$OPTARG") ;;
    f) extra+=("$OPTARG") ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || usage
name=$1 binary=$2; shift 2

fully_qualified() {
  local first=${1%%/*}
  [[ $1 == */* && ( $first == *.* || $first == *:* || $first == localhost ) && ${1##*/} == *:* ]]
}
for n in "$name" "${aliases[@]}"; do
  if ! fully_qualified "$n"; then
    if [[ $n == */* ]]; then hint=$n:dev; else hint=example.test/portcullis/$n; [[ $n == *:* ]] || hint=$hint:dev; fi
    echo "image name '$n' must be fully qualified with a tag, e.g. $hint" >&2
    exit 2
  fi
done
[ -f "$binary" ] || { echo "no such file: $binary" >&2; exit 1; }
[ -S "$CONTAINERD_SOCK" ] || { echo "containerd is not running ($CONTAINERD_SOCK missing): run 'make cluster-up' first" >&2; exit 1; }

base=$(basename "$binary")
specs=("$binary:/$base:755")
# Shared-library closure of a dynamic binary: "libx.so => /path (addr)" and "/lib64/ld-linux... (addr)".
if ldd "$binary" >/dev/null 2>&1; then
  while read -r lib; do
    specs+=("$lib:$lib:755")
  done < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
fi
specs+=("${extra[@]}")

entry=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "/$base" "$@")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 "$LC_DIR/mkoci.py" "$tmp/image.tar" "$name" "$entry" "${specs[@]}"
ctr_k8s images import "$tmp/image.tar" >/dev/null
for a in "${aliases[@]}"; do
  ctr_k8s images tag --force "$name" "$a" >/dev/null
done
echo "imported $name (${#specs[@]} file(s), $(du -h "$tmp/image.tar" | cut -f1) archive)${aliases:+, also tagged ${aliases[*]}}"
