# ferrolm — the commands a newcomer runs: `make serve`, `make test`.
SHELL := /bin/bash
# Builds live outside the clone so they can carry between runs (CI and sessions).
CARGO_TARGET_DIR ?= $(HOME)/.cache/ferrolm/target
export CARGO_TARGET_DIR
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release/ferrolm
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: build model serve test test-tools test-openai fmt clippy generate

build:
	$(CARGO) build --release --workspace

# The default model (SmolLM2-135M-Instruct, GGUF Q4_1), fetched once into ~/.cache/ferrolm/models.
model:
	@./models/fetch-default.sh >/dev/null

# Build, fetch the default model, and serve the OpenAI API on $(HOST):$(PORT).
serve: build model
	$(BIN) serve --host $(HOST) --port $(PORT)

test-tools:
	@./scripts/ensure-test-tools.sh

# Every test, in release mode (debug decodes ~20x slower), then the official openai client.
test: model test-tools
	$(CARGO) test --release --workspace
	$(MAKE) test-openai

test-openai:
	FERROLM_BIN=$(BIN) ./scripts/test-openai-client.sh

generate: build model
	$(BIN) generate --chat --prompt "What is the capital of France?"

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --release --workspace --all-targets
