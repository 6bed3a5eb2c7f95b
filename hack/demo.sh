#!/usr/bin/env bash
# make demo: the proxy serving a 95/5 canary in front of two local backends, then a live
# config push to 50/50 while it keeps serving. Everything on loopback; Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

HTTP_PORT=18080
SAMPLE=config/samples/proxy/canary.json
WORK=$(mktemp -d /tmp/portcullis-demo.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "==> building (release)"
cargo build --release --quiet -p portcullis-dataplane -p portcullis-operator --example demo_backend
BIN=target/release

echo "==> starting backends v1 (127.0.0.1:18181) and v2 (127.0.0.1:18182)"
"$BIN/examples/demo_backend" v1 127.0.0.1:18181 & PIDS+=($!)
"$BIN/examples/demo_backend" v2 127.0.0.1:18182 & PIDS+=($!)

echo "==> starting portcullis-proxy with $SAMPLE"
"$BIN/portcullis-proxy" --config "$SAMPLE" --control-socket "$WORK/control.sock" \
  --admin-address 127.0.0.1:19000 --bind-address 127.0.0.1 --cores 2 2>"$WORK/proxy.log" & PIDS+=($!)
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:19000/ready >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS http://127.0.0.1:19000/ready >/dev/null || { cat "$WORK/proxy.log"; exit 1; }

split() {
  # One curl, one keep-alive connection, N requests; count the x-backend header.
  local n=$1 urls=()
  for _ in $(seq 1 "$n"); do urls+=(-o /dev/null "http://127.0.0.1:$HTTP_PORT/"); done
  curl -s -H 'Host: shop.example.com' -w '%header{x-backend}\n' "${urls[@]}" | sort | uniq -c
}

echo
echo "==> one request:"
curl -s -i -H 'Host: shop.example.com' "http://127.0.0.1:$HTTP_PORT/" | sed 's/^/    /'
echo "==> a host no route serves answers 404:"
curl -s -o /dev/null -w '    %{http_code}\n' -H 'Host: other.example.com' "http://127.0.0.1:$HTTP_PORT/"
echo
echo "==> 400 requests with weights 95/5:"
split 400
echo
echo "==> pushing generation 2 with weights 50/50 over the control socket:"
sed -e 's/"generation": 1/"generation": 2/' -e 's/"weight": 95/"weight": 50/' -e 's/"weight": 5,/"weight": 50,/' \
  "$SAMPLE" > "$WORK/fifty.json"
"$BIN/portcullis" push --socket "$WORK/control.sock" --config "$WORK/fifty.json"
echo
echo "==> 400 requests with weights 50/50:"
split 400
echo
echo "==> metrics (excerpt):"
curl -s http://127.0.0.1:19000/metrics | grep -E '^portcullis_(requests_total|config_generation|config_swaps_total|config_last_swap)' | sed 's/^/    /'
