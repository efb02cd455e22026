# Aisle — common tasks. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
GRPC_ADDR ?= 127.0.0.1:50051
HTTP_ADDR ?= 127.0.0.1:9090

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install system packages the build and tests need (cc, protoc and its includes, etcd, ...) when missing
	@./scripts/deps.sh

.PHONY: fresh-machine
fresh-machine: ## As root: prove `make run` on a clean Debian root (mmdebstrap), then deps and every target's build
	./scripts/fresh-machine.sh

.PHONY: build
build: ## Build release binaries (aisle, aisle-train, aisle-loadtest)
	@./scripts/deps.sh --build-only
	$(CARGO) build --release --workspace --bins

.PHONY: run
run: build ## Run one node with the embedded demo world (gRPC $(GRPC_ADDR), HTTP $(HTTP_ADDR))
	./target/release/aisle serve --grpc-addr $(GRPC_ADDR) --http-addr $(HTTP_ADDR)

.PHONY: test
test: deps ## Lint, then run every test (unit, integration, cluster, manifests)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory k8s-check

.PHONY: k8s-check
k8s-check: ## Kubernetes deployment: chart, values schema, kustomize, Dockerfile, and the binary run as the chart runs it
	CARGO="$(CARGO)" python3 scripts/k8s/check.py

.PHONY: k8s-generate
k8s-generate: ## Rewrite k8s/base from the Helm chart's defaults (after changing helm/aisle)
	python3 scripts/k8s/check.py generate

.PHONY: lint
lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: bench
bench: ## Criterion benchmarks of the hot code
	$(CARGO) bench --workspace

.PHONY: loadtest
loadtest: build ## Start a release node and load it: decide at 5,000/s with the floor, verdict against 2 ms p99
	./scripts/loadtest.sh

.PHONY: cluster-up
cluster-up: deps build ## Start etcd and three nodes on loopback (ports 50051-50053, HTTP 9090-9092)
	./scripts/cluster-up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local cluster
	./scripts/cluster-down.sh
