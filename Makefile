# ferrolm — the commands a newcomer runs: `make serve`, `make test`.
SHELL := /bin/bash
# Builds live outside the clone so they can carry between runs (CI and sessions).
CARGO_TARGET_DIR ?= $(HOME)/.cache/ferrolm/target
export CARGO_TARGET_DIR
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release/ferrolm
HOST ?= 127.0.0.1
PORT ?= 8000

# CUDA: the architectures to build kernels for (CI builds 90 only), and candle's own.
FERROLM_CUDA_ARCHS ?= 80;89;90
export FERROLM_CUDA_ARCHS
# candle's kernels are PTX of one architecture: the lowest, which JIT-compiles for the later ones.
CUDA_COMPUTE_CAP ?= $(firstword $(subst ;, ,$(FERROLM_CUDA_ARCHS)))
export CUDA_COMPUTE_CAP
GPU_BIN := .build/gpu/ferrolm

# Everything a GPU session carries: the CUDA binary and a small GGUF (see scripts/gpu-check.sh).
.PHONY: gpu-bundle
gpu-bundle: build-cuda model
	./scripts/make-tiny-gguf.sh

.PHONY: bench build build-cuda candle-patch model model-gemma3 serve test test-tools test-openai test-cuda fmt clippy generate

# candle-core with cudarc's dynamic-loading (the workspace's [patch.crates-io] points there).
candle-patch:
	@./scripts/patch-candle.sh

build: candle-patch
	$(CARGO) build --release --workspace

# The same binary with CUDA (runs on CPU-only hosts too; opens libcuda at first use).
# Copies it to $(GPU_BIN) (+ .xz) for carrying to a GPU host.
build-cuda: candle-patch
	CUDA_HOME=$$(./scripts/install-cuda-toolchain.sh) && export CUDA_HOME PATH="$$CUDA_HOME/bin:$$PATH" \
	  CUDAFORGE_THREADS=$$(nproc) && $(CARGO) build --release -p ferrolm --features cuda
	@mkdir -p $(dir $(GPU_BIN))
	cp $(BIN) $(GPU_BIN) && strip $(GPU_BIN) && xz -T0 -6 -c $(GPU_BIN) > $(GPU_BIN).xz

# The default model (SmolLM2-135M-Instruct, GGUF Q4_1), fetched once into ~/.cache/ferrolm/models.
model:
	@./models/fetch-default.sh >/dev/null

# The second real model (Gemma 3 270M base, GGUF Q4_K_M, 253 MB), for its goldens and the
# openai client's run against it.
model-gemma3:
	@./models/fetch-gemma3.sh >/dev/null

# Build, fetch the default model, and serve the OpenAI API on $(HOST):$(PORT).
serve: build model
	$(BIN) serve --host $(HOST) --port $(PORT)

test-tools:
	@./scripts/ensure-test-tools.sh

# Every test, in release mode (debug decodes ~20x slower), then the official openai client,
# then the CUDA build (kernels compile on every change) and its checks.
test: candle-patch model model-gemma3 test-tools layout
	$(CARGO) test --release --workspace
	$(MAKE) fuzz
	# The criterion benches compile with the tests (run them with `make bench`).
	$(CARGO) bench --no-run -p ferrolm-engine --bench engine
	$(MAKE) test-openai
	$(MAKE) test-cuda
	$(MAKE) k8s-validate
	$(MAKE) test-platform

# The platform, locally (docs/deploy.md's monitoring and autoscaling): every alert's
# promtool unit tests, a real Prometheus scraping a real server with the kind stack's rendered
# ServiceMonitor, PrometheusRule and KEDA queries (scripts/test-platform.sh), the stacks'
# scoping (scripts/test-stacks.py), the real LiteLLM proxy with the shipped config
# (scripts/test-litellm.sh), and the kind overlay's memory limit against the server run with
# its flags, idle and full.
# The platform on a local kind cluster (docs/deploy.md, section 1): the CPU image, the
# cluster, Prometheus, KEDA, the kind stack and LiteLLM; where kind, helm or a container engine
# is missing, stops after rendering and validating the manifests, naming what is missing.
.PHONY: local
local:
	./scripts/local.sh

.PHONY: test-platform
test-platform: build model test-tools
	./scripts/test-alert-rules.sh
	python3 scripts/test-stacks.py
	./scripts/test-platform.sh $(BIN)
	./scripts/test-litellm.sh $(BIN)
	./scripts/test-make-local.sh
	@if command -v kubectl >/dev/null; then \
	  python3 scripts/test-overlay-memory.py $(BIN) $$(./models/fetch-default.sh); \
	else echo "test-platform: SKIPPED the kind overlay's memory check (no kubectl to render it)" >&2; fi

# The code's shape (docs/architecture.md): no file over 600 lines outside tests, no import
# cycles between files or folders, the engine's layer order, no candle in the server.
.PHONY: layout
layout:
	python3 scripts/test_check_layout.py
	python3 scripts/check-layout.py

# Fuzzes the readers of untrusted input (fuzz/: GGUF reader, chat templates, tokenizer,
# detokenizer in crates/formats; request checks and SSE framing in crates/protocol) for
# FUZZ_SECONDS each; a crash fails (scripts/fuzz.sh).
FUZZ_SECONDS ?= 20
.PHONY: fuzz
fuzz: model
	./scripts/fuzz.sh $(FUZZ_SECONDS)

# Criterion benches of the engine's hot pieces (benches/engine.rs); BENCH_ARGS=--quick for a short run.
bench: candle-patch
	$(CARGO) bench -p ferrolm-engine --bench engine -- $(BENCH_ARGS)

# Deployment files, offline: the shared validator on k8s/ (yamllint, kustomize render, strict
# Kubernetes and custom-resource schemas, promtool, hadolint), hadolint on the Dockerfile, and
# every metric the KEDA triggers, alerts and dashboard name checked against a live server.
K8S_VALIDATE ?= $(firstword $(wildcard ../shared/k8s-validate/validate.sh /work/shared/k8s-validate/validate.sh))
K8S_TOOLS_VENV ?= /tmp/k8s-validate-venv
.PHONY: k8s-validate image
k8s-validate: build model
	@if [ -z "$(K8S_VALIDATE)" ]; then \
	  echo "k8s-validate: SKIPPED, the validator (../shared/k8s-validate/validate.sh) is not on this machine" >&2; \
	else \
	  TOOLS_VENV=$(K8S_TOOLS_VENV) $(K8S_VALIDATE) k8s && \
	  $(K8S_TOOLS_VENV)/bin/hadolint --failure-threshold warning Dockerfile && echo "ok   hadolint Dockerfile"; \
	fi
	./scripts/check-k8s-metrics.sh --serve $(BIN) $$(./models/fetch-default.sh)

# Container images: both targets with a container engine that answers (docker, else podman);
# without one (a docker CLI with no daemon included, as here) the CPU image assembled FROM
# scratch with buildah and run once.
image: build
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  docker build --target cpu -t ferrolm:cpu . && docker build --target cuda -t ferrolm:cuda .; \
	elif command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; then \
	  podman build --target cpu -t ferrolm:cpu . && podman build --target cuda -t ferrolm:cuda .; \
	else \
	  command -v docker >/dev/null 2>&1 && echo "image: the docker CLI is here but its daemon does not answer (docker info); building the CPU image with buildah instead" >&2; \
	  ./scripts/build-cpu-image.sh $(BIN); \
	fi

test-cuda: build-cuda
	./scripts/check-cuda-build.sh $(GPU_BIN)

test-openai: model-gemma3
	FERROLM_BIN=$(BIN) ./scripts/test-openai-client.sh
	FERROLM_BIN=$(BIN) ./scripts/test-openai-client.sh $$(./models/fetch-gemma3.sh) --no-chat \
	  "--expect= the capital of the country"

generate: build model
	$(BIN) generate --chat --prompt "What is the capital of France?"

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --release --workspace --all-targets
