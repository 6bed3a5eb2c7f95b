#!/usr/bin/env bash
# make bench: install the peers and tools, build the proxy, run the side-by-side benchmark.
# Extra arguments go to bench/bench.py (e.g. --runs 3 --seconds 5).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/ensure-tools.sh bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet -p portcullis-dataplane -p portcullis-operator
exec python3 bench/bench.py "$@"
