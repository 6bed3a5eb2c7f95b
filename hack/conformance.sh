#!/usr/bin/env bash
# make conformance: the upstream Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance,
# pinned in conformance/go.mod) against Portcullis on the local cluster.
#
#   1. local cluster up (an already running one is reused), unless KUBECONFIG names a cluster
#   2. our images, the Gateway API CRDs of the pinned version (the experimental channel, a superset
#      of the standard one that HTTPRouteRetry needs; GATEWAY_API_CHANNEL=standard for the
#      standard CRDs), the operator
#   3. the suite's backends built from the conformance module's Go source (echo-basic, and
#      coredns for the base manifests) and imported under the exact image names its manifests use
#   4. GatewayClass portcullis-conformance, then the suite with the profiles we claim; the
#      supported features are read from that class's status.supportedFeatures, so the suite tests
#      exactly what we claim
#   5. report: conformance/reports/<gateway-api version>/portcullis-<version>.yaml
#
# Extra arguments go to the suite, e.g. `make conformance ARGS='-run-test=HTTPRouteSimpleSameNamespace
# -supported-features=Gateway,HTTPRoute'` (then no report is written unless -report-output is given).
# CONFORMANCE_KEEP_CLUSTER=1 leaves a cluster this script started running.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
mkdir -p target
# shellcheck source=local-cluster/versions.env
source hack/local-cluster/versions.env
export GOTOOLCHAIN=local
export GATEWAY_API_CHANNEL=${GATEWAY_API_CHANNEL:-experimental}
started=$(date +%s)
stamp() { echo "== $* ($(( $(date +%s) - started )) s)"; }

suite_version=$(cd conformance && go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api/conformance)
api_version=$(cd conformance && go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api)
if [ "$suite_version" != "$GATEWAY_API_VERSION" ] || [ "$api_version" != "$GATEWAY_API_VERSION" ]; then
  echo "conformance/go.mod pins the suite at $suite_version and the API at $api_version," \
       "but hack/local-cluster/versions.env installs CRDs $GATEWAY_API_VERSION; make them equal" >&2
  exit 1
fi

KUBECTL=$CACHE/k8s-$K8S_VERSION/bin/kubectl
own_cluster=false
if [ -z "${KUBECONFIG:-}" ]; then
  stamp "local cluster"
  hack/local-cluster/up.sh | tee target/conformance-cluster-up.log
  grep -q 'the cluster is already up' target/conformance-cluster-up.log || own_cluster=true
  export KUBECONFIG=$CACHE/kubeconfig
  if $own_cluster && [ "${CONFORMANCE_KEEP_CLUSTER:-}" != 1 ]; then
    trap 'stamp "tearing the local cluster down"; hack/local-cluster/down.sh' EXIT
  fi
  stamp "images"
  hack/images/build.sh

  stamp "conformance backends"
  bin=$CACHE/conformance-$GATEWAY_API_VERSION
  mkdir -p "$bin"
  (cd conformance && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$bin/echo-basic" \
    sigs.k8s.io/gateway-api/conformance/echo-basic)
  # Every echo-basic tag the pinned suite's manifests name runs this one build of its source.
  suite_dir=$(cd conformance && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance)
  mapfile -t echo_images < <(grep -rhoE 'registry\.k8s\.io/gateway-api/echo-basic:[^"[:space:]]+' \
    "$suite_dir" | sort -u)
  aliases=()
  for image in "${echo_images[@]:1}"; do aliases+=(-a "$image"); done
  hack/local-cluster/import-image.sh "${aliases[@]}" "${echo_images[0]}" "$bin/echo-basic"
  # The base manifests run coredns, the UDPRoute tests' DNS backend. Built from the coredns
  # module at the tag the manifests name.
  coredns_image=$(grep -rhoE 'registry\.k8s\.io/coredns/coredns:v[0-9.]+' "$suite_dir/base" \
    | sort -u | head -1)
  coredns_version=${coredns_image##*:}
  if [ ! -x "$bin/coredns-$coredns_version" ]; then
    GOBIN=$bin/gobin CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' "github.com/coredns/coredns@$coredns_version"
    mv "$bin/gobin/coredns" "$bin/coredns-$coredns_version"
  fi
  hack/local-cluster/import-image.sh "$coredns_image" "$bin/coredns-$coredns_version"
fi

stamp "deploy"
hack/deploy.sh deploy
"$KUBECTL" apply --server-side -f conformance/gatewayclass.yaml
"$KUBECTL" wait --for=condition=Accepted --timeout=120s gatewayclass/portcullis-conformance
# The suite reads the features to test from the class's status once, at its start: wait until
# the operator just deployed has published its own list (an older one may still be shown).
want=$(cargo run --release --quiet --locked -p portcullis-operator -- features | paste -sd, -)
for _ in $(seq 120); do
  have=$("$KUBECTL" get gatewayclass portcullis-conformance \
    -o jsonpath='{.status.supportedFeatures[*].name}' | tr ' ' ',')
  [ "$have" = "$want" ] && break
  sleep 1
done
if [ "$have" != "$want" ]; then
  echo "GatewayClass portcullis-conformance lists features $have, this build claims $want" >&2
  exit 1
fi

stamp "conformance suite $suite_version"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
reports=conformance/reports/$GATEWAY_API_VERSION
mkdir -p "$reports" target/conformance
report_args=()
if [ $# -eq 0 ]; then
  report_args=(-report-output="$ROOT/$reports/portcullis-$version.yaml")
fi
status=0
(cd conformance && KUBECTL=$KUBECTL CONFORMANCE_DUMP_DIR=$ROOT/target/conformance \
  go test -tags conformance -count=1 -timeout 3h -run TestConformance -v . -args \
    -gateway-class=portcullis-conformance \
    -conformance-profiles=GATEWAY-HTTP,GATEWAY-GRPC,GATEWAY-TLS,GATEWAY-TCP,GATEWAY-UDP \
    -organization=portcullis -project=portcullis -url=https://portcullis.dev \
    -version="v$version-$commit" -contact=@portcullis/maintainers -mode=default \
    -usable-address=203.0.113.10 -unusable-address=127.0.0.2 \
    "${report_args[@]}" "$@") 2>&1 | tee target/conformance/suite.log || status=$?
grep -E '^    --- FAIL' target/conformance/suite.log || true
echo "passed: $(grep -cE '^    --- PASS' target/conformance/suite.log || true)  failed: $(grep -cE '^    --- FAIL' target/conformance/suite.log || true)  skipped: $(grep -cE '^    --- SKIP' target/conformance/suite.log || true)"
[ $# -eq 0 ] && echo "report: $reports/portcullis-$version.yaml"
stamp "done (exit $status)"
exit $status
