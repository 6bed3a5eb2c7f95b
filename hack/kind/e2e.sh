#!/usr/bin/env bash
# make e2e-kind: the same e2e suite on a kind cluster, for machines with Docker (our own build
# machines have no Docker and use `make e2e` on the local cluster instead; this path is not run
# in CI).
#
#   1. creates kind cluster "portcullis-e2e" (hack/kind/cluster.yaml) with the proxy's seccomp
#      profile mounted where the kubelet looks for it
#   2. builds the three images from the Dockerfile and loads them into the nodes
#   3. starts cloud-provider-kind so Gateway Services get LoadBalancer addresses reachable from
#      this machine, and routes the pod network through the node (scenario 7 reads proxy metrics
#      from pod IPs; Linux only)
#   4. runs hack/e2e.sh against it, then deletes the cluster (KEEP_KIND=1 keeps it)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=${KIND_CLUSTER:-portcullis-e2e}
export IMG=example.test/portcullis/portcullis:dev
export PROXY_IMG=example.test/portcullis/proxy:dev
export E2E_ECHO_IMAGE=example.test/portcullis/echo:dev
for tool in docker kind kubectl go; do
  command -v "$tool" >/dev/null || { echo "make e2e-kind needs $tool" >&2; exit 1; }
done
cd "$ROOT"

config=$(mktemp)
sed "s|@ROOT@|$ROOT|" hack/kind/cluster.yaml > "$config"
kind create cluster --name "$CLUSTER" --config "$config" --wait 120s
rm -f "$config"
export KUBECONFIG=$(mktemp)
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG"
cleanup() {
  [ -n "${provider_pid:-}" ] && kill "$provider_pid" 2>/dev/null || true
  if [ "${KEEP_KIND:-}" != 1 ]; then kind delete cluster --name "$CLUSTER"; fi
}
trap cleanup EXIT

docker build --target portcullis -t "$IMG" .
docker build --target portcullis-proxy -t "$PROXY_IMG" .
docker build --target echo -t "$E2E_ECHO_IMAGE" .
kind load docker-image --name "$CLUSTER" "$IMG" "$PROXY_IMG" "$E2E_ECHO_IMAGE"

GOBIN=${GOBIN:-$HOME/go/bin} go install sigs.k8s.io/cloud-provider-kind@v0.7.0
"${GOBIN:-$HOME/go/bin}/cloud-provider-kind" >/tmp/cloud-provider-kind.log 2>&1 &
provider_pid=$!

if [ "$(uname)" = Linux ]; then
  node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$CLUSTER-control-plane")
  sudo ip route replace 10.244.0.0/16 via "$node_ip" || echo "note: no route to pod IPs; scenario 7 will fail"
fi

hack/e2e.sh "$@"
