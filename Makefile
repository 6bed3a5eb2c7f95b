# Portcullis — Kubernetes Gateway API implementation in Rust.
# `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: build
build: ## Build every binary (release).
	$(CARGO) build --release --workspace --exclude portcullis-e2e --bins --examples

.PHONY: test
test: ## Run all tests that need no cluster (unit, table and loopback integration tests).
	hack/ensure-tools.sh test
	$(CARGO) test --workspace --locked --exclude portcullis-e2e
	$(CARGO) test --locked -p portcullis-e2e --lib --bins
	$(CARGO) test --locked -p portcullis-dataplane --features fault-injection --test panic_containment

.PHONY: lint
lint: ## rustfmt check and clippy with warnings as errors.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy --locked -p portcullis-dataplane --all-targets --features fault-injection -- -D warnings

.PHONY: fmt
fmt: ## Format the code.
	$(CARGO) fmt --all

##@ Generated code and manifests

.PHONY: generate
generate: ## Generate the Gateway API Rust types (api/src/gateway_api) from the pinned Go module's CRDs.
	hack/generate-gateway-api.sh

.PHONY: manifests
manifests: ## Write our CRDs (from the Rust types in api/) and the operator's RBAC (from operator/src/rbac.rs) under config/.
	$(CARGO) run --quiet --locked -p portcullis-operator -- crd > config/crd/bases/portcullis.dev_gatewayparameters.yaml
	$(CARGO) run --quiet --locked -p portcullis-operator -- rbac > config/rbac/role.yaml

.PHONY: check-generated
check-generated: generate manifests ## Fail if generated files differ from what is committed.
	@git diff --exit-code -- api/src/gateway_api config/crd config/rbac/role.yaml || { echo "generated files are stale: run 'make generate manifests' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- api/src/gateway_api config/crd config/rbac/role.yaml)" || { echo "untracked generated files: run 'make generate manifests' and commit"; exit 1; }

##@ Try it

.PHONY: demo
demo: ## Standalone mode on config/samples/standalone: a 95/5 canary over HTTP and HTTPS, then a live 50/50 edit.
	hack/demo.sh

##@ Local cluster

.PHONY: cluster-up
cluster-up: ## Start a real single-node Kubernetes (built from source, cached); kubeconfig in ~/.cache/portcullis/kubeconfig.
	hack/local-cluster/up.sh

.PHONY: e2e
e2e: ## End-to-end suite: images, local cluster (unless KUBECONFIG is set), deploy, e2e tests, teardown.
	hack/e2e.sh

.PHONY: conformance
conformance: ## Upstream Gateway API conformance suite on the local cluster; report in conformance/reports/.
	hack/conformance.sh $(ARGS)

.PHONY: e2e-kind
e2e-kind: ## The e2e suite on kind (needs Docker, kind, kubectl; not runnable on our build machines).
	hack/kind/e2e.sh

.PHONY: images
images: ## Build the operator and proxy images without Docker and import them into the local cluster.
	hack/images/build.sh

.PHONY: install
install: ## Install the Gateway API standard CRDs (pinned module) and ours into KUBECONFIG's cluster.
	hack/deploy.sh install

.PHONY: deploy
deploy: ## install + the operator (IMG=..., PROXY_IMG=...; defaults match `make images`).
	hack/deploy.sh deploy

.PHONY: undeploy
undeploy: ## Remove the operator (CRDs, Gateways and what they own stay).
	hack/deploy.sh undeploy

.PHONY: seccomp-profile
seccomp-profile: ## Regenerate config/seccomp/proxy.json from the syscalls the proxy makes in its tests (strace).
	hack/seccomp/trace-proxy.py

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove everything it created (safe when nothing is up).
	hack/local-cluster/down.sh

##@ Measure

.PHONY: bench
bench: ## Benchmark the proxy against nginx and direct-to-backend on this machine.
	bench/run.sh

.PHONY: scaling
scaling: ## Throughput with 1, 2, 4, … cores, Portcullis vs nginx (bench/scaling.sh; --package for other machines).
	hack/ensure-tools.sh bench
	$(CARGO) build --release --quiet -p portcullis-dataplane
	bench/scaling.sh $(ARGS)

##@ Hardening

.PHONY: fuzz
fuzz: ## Fuzz the proxy (parsers, connection engine, config frames, router); FUZZ_SECONDS per target (60), FUZZ_JOBS (1).
	hack/fuzz.sh

.PHONY: slow-clients
slow-clients: ## slowhttptest slow headers/body/read, 1 000 connections each, with a latency probe; results in bench/results/hardening/.
	python3 bench/hardening/slow_clients.py

.PHONY: overload
overload: ## Twice the saturating load for DURATION s (300) plus a connection flood; recovery time; results in bench/results/hardening/.
	python3 bench/hardening/overload.py
