#!/usr/bin/env bash
# make demo: `portcullis standalone` serving the 95/5 canary of config/samples/standalone in
# front of two local backends, over HTTP and HTTPS (a certificate generated here), then an
# edit of the route to 50/50 that standalone picks up and pushes while it keeps serving.
# Everything on loopback; the repository is never modified (standalone runs on a copy).
# Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

HTTP_PORT=18080
HTTPS_PORT=18443
ADMIN=127.0.0.1:19000
HOST=shop.example.com
WORK=$(mktemp -d /tmp/portcullis-demo.XXXXXX)
PIDS=()
cleanup() {
  # Standalone forwards SIGTERM to its proxy and waits for it to drain.
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

command -v openssl >/dev/null || { echo "make demo needs openssl (apt-get install openssl)"; exit 1; }

echo "==> building (release)"
cargo build --release --quiet -p portcullis-dataplane -p portcullis-operator \
  --bin portcullis --bin portcullis-proxy --example demo_backend
BIN=target/release

echo "==> starting backends v1 (127.0.0.1:18181) and v2 (127.0.0.1:18182)"
"$BIN/examples/demo_backend" v1 127.0.0.1:18181 & PIDS+=($!)
"$BIN/examples/demo_backend" v2 127.0.0.1:18182 & PIDS+=($!)

echo "==> generating a self-signed ECDSA certificate for $HOST (Secret demo/demo-tls)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
{
  printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: demo-tls\n  namespace: demo\n'
  printf 'type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n'
  sed 's/^/    /' "$WORK/tls.crt"
  printf '  tls.key: |\n'
  sed 's/^/    /' "$WORK/tls.key"
} > "$WORK/demo-tls.yaml"

# Standalone watches the files it reads: give it a copy, which this script edits later.
cp -r config/samples/standalone "$WORK/objects"
ROUTE="$WORK/objects/20-httproute.yaml"

echo "==> portcullis standalone -f config/samples/standalone (a copy) -f <generated Secret>"
"$BIN/portcullis" standalone -f "$WORK/objects" -f "$WORK/demo-tls.yaml" \
  --proxy-bin "$BIN/portcullis-proxy" --admin-address "$ADMIN" --bind-address 127.0.0.1 \
  --cores 2 >"$WORK/standalone.log" 2>&1 & PIDS+=($!)
STANDALONE=$!
for _ in $(seq 1 100); do
  curl -fsS "http://$ADMIN/ready" >/dev/null 2>&1 && break
  kill -0 "$STANDALONE" 2>/dev/null || break
  sleep 0.1
done
curl -fsS "http://$ADMIN/ready" >/dev/null 2>&1 || { cat "$WORK/standalone.log"; exit 1; }
# Its own lines (the proxy's log lines are JSON).
grep -v '^{' "$WORK/standalone.log" | sed 's/^/    /'

split() {
  # One curl, one keep-alive connection, N requests; count the x-backend header.
  local n=$1 urls=()
  for _ in $(seq 1 "$n"); do urls+=(-o /dev/null "http://127.0.0.1:$HTTP_PORT/"); done
  curl -s -H "Host: $HOST" -w '%header{x-backend}\n' "${urls[@]}" | sort | uniq -c
}

echo
echo "==> one request over HTTP:"
curl -s -i -H "Host: $HOST" "http://127.0.0.1:$HTTP_PORT/" | sed 's/^/    /'
echo "==> the same over HTTP/2 without TLS (h2c, prior knowledge, as gRPC clients speak it):"
curl -s -i --http2-prior-knowledge -H "Host: $HOST" "http://127.0.0.1:$HTTP_PORT/" | sed 's/^/    /'
echo "==> one request over HTTPS (ALPN picks HTTP/2; certificate checked against the generated one):"
curl -s -i --resolve "$HOST:$HTTPS_PORT:127.0.0.1" --cacert "$WORK/tls.crt" \
  "https://$HOST:$HTTPS_PORT/" | sed 's/^/    /'
echo "==> a host no route serves answers 404:"
curl -s -o /dev/null -w '    %{http_code}\n' -H 'Host: other.example.com' "http://127.0.0.1:$HTTP_PORT/"
echo
echo "==> 400 requests with weights 95/5:"
split 400
echo
echo "==> editing the route (the copy): weights 50/50"
sed -i -e 's/weight: 95/weight: 50/' -e 's/weight: 5$/weight: 50/' "$ROUTE"
for _ in $(seq 1 100); do
  grep -q 'pushed generation 2: ACK' "$WORK/standalone.log" && break
  sleep 0.1
done
grep -q 'pushed generation 2: ACK' "$WORK/standalone.log" || { cat "$WORK/standalone.log"; exit 1; }
grep -v '^{' "$WORK/standalone.log" | sed -n '/watching/,$p' | tail -n +2 | sed 's/^/    /'
echo
echo "==> 400 requests with weights 50/50:"
split 400
echo
echo "==> metrics (excerpt):"
curl -s "http://$ADMIN/metrics" | grep -E '^portcullis_(requests_total|config_generation|config_swaps_total|config_last_swap)' | sed 's/^/    /'
echo
echo "==> stopping: SIGTERM to standalone, which forwards it to the proxy and waits for its drain"
kill -TERM "$STANDALONE"
if wait "$STANDALONE"; then status=0; else status=$?; fi
grep -v '^{' "$WORK/standalone.log" | tail -n 2 | sed 's/^/    /'
echo "    standalone exited with status $status"
[ "$status" -eq 0 ]
