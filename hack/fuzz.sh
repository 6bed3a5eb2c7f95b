#!/usr/bin/env bash
# make fuzz: run every cargo-fuzz target of the proxy for a while and report.
#
# Targets (entry functions in dataplane/src/fuzzing.rs, wrappers in dataplane/fuzz/fuzz_targets):
#   request_head  request-head parser and validation
#   chunked       chunked transfer-coding decoder
#   connection    the whole HTTP/1.1 connection state machine over an in-memory transport,
#                 with a loopback upstream
#   config_frame  control-socket frame decoder, config validation and table build
#   route_match   the route matcher against a fixed table, with a brute-force reference
#   client_hello  the ClientHello reader of TLS ports (records, extensions, SNI)
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_JOBS      parallel fuzzing jobs per target (default 1)
#   FUZZ_TARGETS   space-separated subset of targets (default: all)
#   FUZZ_SANITIZER address (default) or none. AddressSanitizer works with the nightly toolchain
#                  rustup installs here; set none where it does not (e.g. a toolchain without
#                  the ASan runtime), which still catches panics, hangs and out-of-memory.
#   FUZZ_TOOLCHAIN toolchain for cargo-fuzz (default: nightly if installed, else stable with
#                  RUSTC_BOOTSTRAP=1, which cargo-fuzz needs for its -Z flags)
#
# The corpus lives in dataplane/fuzz/corpus/<target> (gitignored) so later runs continue from
# it; it is seeded every run (hand-written seeds, the hostile HTTP/1.1 corpus, encoded config
# frames). Any crash, timeout or leak input is copied to dataplane/fuzz/regressions/<target>/,
# where `cargo test -p portcullis-dataplane --lib fuzzing` replays it, and the script exits 1.
set -euo pipefail
TIMEFORMAT='%U %S'
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ_DIR=$ROOT/dataplane/fuzz
cd "$FUZZ_DIR"

SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
JOBS=${FUZZ_JOBS:-1}
SANITIZER=${FUZZ_SANITIZER:-address}
ALL_TARGETS="request_head chunked connection config_frame route_match client_hello"
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}

# cargo-fuzz 0.13 builds on rustc 1.95; --locked keeps its dependencies at tested versions.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  CARGO=(cargo "+$FUZZ_TOOLCHAIN")
elif rustup run nightly rustc --version >/dev/null 2>&1; then
  CARGO=(cargo +nightly)
else
  # Stable rustc accepts the -Z flags cargo-fuzz passes when told it is bootstrapping.
  export RUSTC_BOOTSTRAP=1
  CARGO=(cargo)
fi

# Debug assertions on (-a): overflow and debug_assert! failures count as crashes.
BUILD_FLAGS=(--sanitizer "$SANITIZER" --debug-assertions)
echo "== building fuzz targets (${CARGO[*]} fuzz build, sanitizer $SANITIZER)"
"${CARGO[@]}" fuzz build "${BUILD_FLAGS[@]}"
BIN_DIR=$(ls -d "$FUZZ_DIR"/target/*/release | head -n 1)

echo "== seeding dataplane/fuzz/corpus"
"$BIN_DIR/seed" "$FUZZ_DIR/corpus"

case "$SANITIZER" in
  address) export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0:allocator_may_return_null=1} ;;
esac

LOGS=$FUZZ_DIR/artifacts/logs
mkdir -p "$LOGS"
summary=()
total_cpu=0
failed=0
for target in $TARGETS; do
  mkdir -p "corpus/$target" "artifacts/$target" "regressions/$target"
  marker=$(mktemp)
  log=$LOGS/$target.log
  rm -f "$LOGS/$target".*.log "$log"
  echo "== $target: ${SECONDS_PER_TARGET}s on $JOBS job(s)"
  started=$(date +%s)
  args=(-max_total_time="$SECONDS_PER_TARGET" -timeout=40 -rss_limit_mb=4096
        -print_final_stats=1 -artifact_prefix="$FUZZ_DIR/artifacts/$target/")
  case $target in
    config_frame) args+=(-dict="$FUZZ_DIR/dicts/config_frame.dict") ;;
    *) args+=(-dict="$FUZZ_DIR/dicts/http.dict") ;;
  esac
  timing=$(mktemp)
  set +e
  if [ "$JOBS" -gt 1 ]; then
    # libFuzzer's fork mode: JOBS workers share one corpus; workers log to fuzz-N.log here.
    { time (cd "$LOGS" && "$BIN_DIR/$target" "${args[@]}" -fork="$JOBS" -ignore_crashes=1 \
        "$FUZZ_DIR/corpus/$target" >"$log" 2>&1) ; } 2>"$timing"
  else
    { time "$BIN_DIR/$target" "${args[@]}" "$FUZZ_DIR/corpus/$target" >"$log" 2>&1 ; } 2>"$timing"
  fi
  status=$?
  set -e
  # user + system seconds of the fuzzer and its workers
  cpu=$(tail -n 1 "$timing" | awk '{printf "%d", $1 + $2 + 0.5}')
  rm -f "$timing"
  elapsed=$(( $(date +%s) - started ))
  execs=$( (grep -h 'stat::number_of_executed_units' "$log" || true) \
          | awk '{s += $2} END {print s + 0}')
  if [ "$execs" = 0 ]; then
    # Fork mode and crashes print no final stats: take the last status line.
    execs=$( (grep -o '^#[0-9]*' "$log" || true) | tail -n 1 | tr -d '#')
    execs=${execs:-0}
  fi
  rm -f "$LOGS"/fuzz-*.log
  corpus_size=$(find "corpus/$target" -type f | wc -l)
  findings=0
  while IFS= read -r -d '' artifact; do
    findings=$((findings + 1))
    cp "$artifact" "regressions/$target/"
    echo "   finding: $artifact -> dataplane/fuzz/regressions/$target/$(basename "$artifact")"
  done < <(find "artifacts/$target" -maxdepth 1 -type f \
             \( -name 'crash-*' -o -name 'timeout-*' -o -name 'leak-*' -o -name 'oom-*' \) \
             -newer "$marker" -print0)
  rm -f "$marker"
  if [ "$status" -ne 0 ] && [ "$findings" -eq 0 ]; then
    echo "   $target exited with status $status without an artifact; see $log"
    findings=1
  fi
  [ "$findings" -gt 0 ] && failed=1
  total_cpu=$((total_cpu + cpu))
  rate=$(( elapsed > 0 ? execs / elapsed : execs ))
  summary+=("$(printf '%-14s %8s %8s %12s %9s %8s %9s' "$target" "$elapsed" "$cpu" "$execs" "$rate" "$corpus_size" "$findings")")
done

echo
printf '%-14s %8s %8s %12s %9s %8s %9s\n' target seconds cpu-s executions exec/s corpus findings
for line in "${summary[@]}"; do echo "$line"; done
echo "total CPU time fuzzed: ${total_cpu}s ($(awk "BEGIN {printf \"%.1f\", $total_cpu / 60}") min)"
echo "logs: dataplane/fuzz/artifacts/logs/"
if [ "$failed" -ne 0 ]; then
  echo "findings were copied to dataplane/fuzz/regressions/; fix them, keep the inputs, and" \
       "run cargo test -p portcullis-dataplane --lib fuzzing" >&2
  exit 1
fi
