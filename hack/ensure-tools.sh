#!/usr/bin/env bash
# Installs what a make target needs on a fresh Debian machine, and nothing it already has.
# Usage: hack/ensure-tools.sh test|bench
set -euo pipefail

need_apt=()
want() { command -v "$1" >/dev/null 2>&1 || need_apt+=("$2"); }

case "${1:-}" in
  test)
    # Native build dependencies of aws-lc-sys and glommio's vendored liburing.
    want cc build-essential
    want cmake cmake
    want curl curl
    ;;
  bench)
    want cc build-essential
    want wrk wrk
    want nginx nginx-light
    want haproxy haproxy
    want h2load nghttp2-client
    want openssl openssl
    want bc bc
    want taskset util-linux
    # The OpenSSL build of oha below links the system OpenSSL.
    want pkg-config pkg-config
    dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
    ;;
  *)
    echo "usage: $0 test|bench" >&2
    exit 2
    ;;
esac

if ((${#need_apt[@]})); then
  echo "==> installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# oha (the open-loop, fixed-rate load generator) has no Debian package: cargo builds it once
# into the tools cache, outside the repository, where later runs find it. A second build on
# the system OpenSSL drives the handshake scenario: the same TLS client as wrk's, so every
# proxy negotiates the same key exchange (rustls clients offer a post-quantum hybrid that only
# Portcullis, of the systems measured, accepts).
if [ "${1}" = bench ]; then
  tools="${HOME}/.cache/portcullis/tools"
  if [ ! -x "${tools}/bin/oha" ]; then
    echo "==> cargo install oha --locked --root ${tools}"
    cargo install oha --version 1.16.0 --locked --root "${tools}" --quiet
  fi
  if [ ! -x "${tools}/oha-openssl/bin/oha" ]; then
    echo "==> cargo install oha (native-tls) --root ${tools}/oha-openssl"
    cargo install oha --version 1.16.0 --locked --no-default-features --features native-tls \
      --root "${tools}/oha-openssl" --quiet
  fi
fi
