#!/usr/bin/env bash
# Installs Portcullis into the cluster named by KUBECONFIG (default: the local cluster's).
#
#   hack/deploy.sh install     Gateway API CRDs (from the pinned Go module) and ours
#   hack/deploy.sh deploy      install + the proxy's seccomp profile (local cluster) + the operator
#   hack/deploy.sh undeploy    the operator and its namespace (CRDs and Gateways stay)
#   hack/deploy.sh uninstall   undeploy + every CRD install added
#
# IMG and PROXY_IMG name the images (defaults: what hack/images/build.sh imports).
# GATEWAY_API_CHANNEL=experimental installs the experimental channel's CRDs (a superset:
# HTTPRoute `retry`, for example) instead of the standard ones.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=local-cluster/versions.env
source "$ROOT/hack/local-cluster/versions.env"
IMG=${IMG:-example.test/portcullis/portcullis:dev}
PROXY_IMG=${PROXY_IMG:-example.test/portcullis/proxy:dev}
NAMESPACE=portcullis-system
GATEWAY_API_CHANNEL=${GATEWAY_API_CHANNEL:-standard}
case "$GATEWAY_API_CHANNEL" in
  standard | experimental) ;;
  *) echo "GATEWAY_API_CHANNEL must be standard or experimental, not $GATEWAY_API_CHANNEL" >&2; exit 2 ;;
esac

if [ -z "${KUBECTL:-}" ]; then
  if command -v kubectl >/dev/null; then KUBECTL=kubectl; else KUBECTL=$CACHE/k8s-$K8S_VERSION/bin/kubectl; fi
fi
if [ -z "${KUBECONFIG:-}" ] && [ -f "$CACHE/kubeconfig" ]; then export KUBECONFIG=$CACHE/kubeconfig; fi
k() { "$KUBECTL" "$@"; }

gateway_api_crds() {
  local dir
  dir=$("$ROOT/hack/gateway-api-module.sh")
  echo "$dir/config/crd/$GATEWAY_API_CHANNEL"
}

install_crds() {
  echo "installing the Gateway API $GATEWAY_API_VERSION $GATEWAY_API_CHANNEL CRDs and Portcullis's CRDs"
  local crds
  crds=$(gateway_api_crds)
  if [ "$GATEWAY_API_CHANNEL" = experimental ]; then
    # Standard-channel CRDs come with a policy that refuses experimental CRDs over them; moving
    # to the experimental channel (a superset) means removing it first, as its message says.
    # The experimental bundle installs its own.
    k delete --ignore-not-found validatingadmissionpolicybinding safe-upgrades.gateway.networking.k8s.io >/dev/null
    k delete --ignore-not-found validatingadmissionpolicy safe-upgrades.gateway.networking.k8s.io >/dev/null
  fi
  # The bundle's files: the experimental directory lists them in a kustomization (it holds
  # files it does not install), the standard one is the plain list.
  local files=() policy=() file
  if [ -f "$crds/kustomization.yaml" ]; then
    mapfile -t files < <(sed -n 's/^- //p' "$crds/kustomization.yaml")
  else
    mapfile -t files < <(cd "$crds" && ls -- *.yaml)
  fi
  local crd_args=()
  for file in "${files[@]}"; do
    case $file in
      *vap*) policy+=(-f "$crds/$file") ;;
      *) crd_args+=(-f "$crds/$file") ;;
    esac
  done
  # The policy goes in last: applied with the CRDs, it would be back before a CRD the API server
  # refused while its admission still saw the deleted one (its informer lags the delete) and
  # refuse every retry. Only that refusal is retried.
  local attempt err
  for attempt in $(seq 1 30); do
    if err=$(k apply --server-side --force-conflicts "${crd_args[@]}" 2>&1 >/dev/null); then
      break
    fi
    if ! grep -q 'safe-upgrades' <<<"$err" || [ "$attempt" = 30 ]; then
      echo "$err" >&2
      return 1
    fi
    sleep 1
  done
  if [ ${#policy[@]} -gt 0 ]; then k apply --server-side --force-conflicts "${policy[@]}" >/dev/null; fi
  k apply --server-side --force-conflicts -k "$ROOT/config/crd" >/dev/null
  k wait --for=condition=Established --timeout=60s crd \
    gatewayclasses.gateway.networking.k8s.io gateways.gateway.networking.k8s.io \
    httproutes.gateway.networking.k8s.io referencegrants.gateway.networking.k8s.io \
    gatewayparameters.portcullis.dev >/dev/null
}

# The proxy container runs under a Localhost seccomp profile (io_uring; docs/seccomp.md). On the
# local cluster we own the kubelet, so put it where the kubelet looks; elsewhere the nodes need it
# installed by their owner (hack/kind does it for kind).
install_seccomp_profile() {
  local kubelet_root=${PORTCULLIS_CLUSTER_STATE:-/run/portcullis-cluster}/kubelet
  if [ "${KUBECONFIG:-}" = "$CACHE/kubeconfig" ] && [ -d "$kubelet_root" ]; then
    install -D -m 0644 "$ROOT/config/seccomp/proxy.json" "$kubelet_root/seccomp/portcullis/proxy.json"
    echo "seccomp profile installed in $kubelet_root/seccomp/portcullis/proxy.json"
  else
    echo "note: the nodes must have config/seccomp/proxy.json at <kubelet root>/seccomp/portcullis/proxy.json"
  fi
}

deploy() {
  install_crds
  install_seccomp_profile
  echo "deploying the operator ($IMG, proxies $PROXY_IMG)"
  k kustomize "$ROOT/config/default" \
    | sed -e "s|image: portcullis:latest|image: $IMG|" \
          -e "s|--proxy-image=portcullis-proxy:latest|--proxy-image=$PROXY_IMG|" \
          -e "s|--agent-image=portcullis:latest|--agent-image=$IMG|" \
    | k apply --server-side --force-conflicts -f - >/dev/null
  # A re-deploy of the same tag with a new binary needs new pods.
  k -n "$NAMESPACE" rollout restart deployment/portcullis-operator >/dev/null
  k -n "$NAMESPACE" rollout status deployment/portcullis-operator --timeout=180s
}

undeploy() {
  k delete namespace "$NAMESPACE" --ignore-not-found --wait=true
  k delete clusterrole,clusterrolebinding portcullis-operator --ignore-not-found
}

uninstall() {
  undeploy
  k delete --ignore-not-found -k "$ROOT/config/crd"
  k delete --ignore-not-found -f "$(gateway_api_crds)"
}

case ${1:-} in
  install) install_crds ;;
  deploy|undeploy|uninstall) "$1" ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
