//go:build conformance

// The upstream Gateway API conformance suite, run against the cluster in KUBECONFIG.
// hack/conformance.sh passes the flags (GatewayClass, profiles, report path, implementation
// block); this file only adds what flags cannot carry.
package conformance

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
)

func TestConformance(t *testing.T) {
	opts := conformance.DefaultOptions(t)
	// The local cluster runs the operator, the proxies and ~30 echo pods on two cores; a
	// conformant data plane must still converge within MaxTimeToConsistency (left at its
	// upstream value), but pods and Gateways take longer to come up than on a larger CI box.
	opts.TimeoutConfig.NamespacesMustBeReady = 600 * time.Second
	// GatewayObservedGenerationBump spends this one budget on waiting for every Gateway and
	// pod of the shared namespace to be ready (about 45 pods with the TLS and TCP profiles)
	// before it reads its own Gateway; on two cores that wait alone has taken 78 s.
	opts.TimeoutConfig.LatestObservedGenerationSet = 180 * time.Second
	opts.Hook = dumpStateOnFailure
	conformance.RunConformanceWithOptions(t, opts)
}

// dumpStateOnFailure leaves, for every failed test, what an engineer reads first: the Gateways
// and routes with their status, and the operator's recent log lines.
func dumpStateOnFailure(t *testing.T, test suite.ConformanceTest, _ *suite.ConformanceTestSuite) {
	if !t.Failed() {
		return
	}
	dir := os.Getenv("CONFORMANCE_DUMP_DIR")
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("state dump: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kubectl := os.Getenv("KUBECTL")
	if kubectl == "" {
		kubectl = "kubectl"
	}
	commands := map[string][]string{
		"objects.yaml": {"get", "gatewayclasses,gateways,listenersets,httproutes,grpcroutes,tlsroutes,tcproutes,udproutes,referencegrants", "-A", "-o", "yaml"},
		"operator.log": {"-n", "portcullis-system", "logs", "deploy/portcullis-operator", "--tail=300"},
		"pods.txt":     {"get", "pods", "-A", "-o", "wide"},
	}
	for name, args := range commands {
		out, err := exec.CommandContext(ctx, kubectl, args...).CombinedOutput()
		if err != nil {
			out = append(out, []byte(fmt.Sprintf("\n%s: %v\n", kubectl, err))...)
		}
		path := filepath.Join(dir, test.ShortName+"-"+name)
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Logf("state dump: %v", err)
		}
	}
	t.Logf("state after the failure written to %s/%s-*", dir, test.ShortName)
}
