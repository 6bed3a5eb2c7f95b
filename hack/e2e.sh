#!/usr/bin/env bash
# make e2e: build the images, bring the local cluster up (unless KUBECONFIG names a cluster),
# install the CRDs, deploy the operator, run the e2e crate, and take the cluster down again if
# this script brought it up (E2E_KEEP_CLUSTER=1 keeps it).
#
# With KUBECONFIG set, the images must already be where that cluster's nodes find them
# (hack/kind/e2e.sh loads them into kind) and IMG / PROXY_IMG / E2E_ECHO_IMAGE name them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
started=$(date +%s)
stamp() { echo "== $* ($(( $(date +%s) - started )) s)"; }

own_cluster=false
if [ -z "${KUBECONFIG:-}" ]; then
  own_cluster=true
  stamp "local cluster"
  hack/local-cluster/up.sh
  KUBECONFIG=$(source hack/local-cluster/versions.env; echo "$CACHE/kubeconfig")
  export KUBECONFIG
  if [ "${E2E_KEEP_CLUSTER:-}" != 1 ]; then
    trap 'stamp "tearing the local cluster down"; hack/local-cluster/down.sh' EXIT
  fi
  stamp "images"
  hack/images/build.sh --e2e
fi

stamp "deploy"
hack/deploy.sh deploy

stamp "e2e tests"
status=0
cargo test --locked -p portcullis-e2e --test e2e -- --test-threads=1 --show-output "$@" || status=$?
if [ $status -ne 0 ] && $own_cluster; then
  # Leave the evidence where CI keeps it.
  mkdir -p "$ROOT/target/e2e-logs"
  kubectl_bin=$(source hack/local-cluster/versions.env; echo "$CACHE/k8s-$K8S_VERSION/bin/kubectl")
  "$kubectl_bin" -n portcullis-system logs deploy/portcullis-operator --all-containers --tail=500 \
    > "$ROOT/target/e2e-logs/operator.log" 2>&1 || true
  "$kubectl_bin" get pods -A -o wide > "$ROOT/target/e2e-logs/pods.txt" 2>&1 || true
  echo "operator logs and pods in target/e2e-logs/"
fi
stamp "done (exit $status)"
exit $status
