# ferrolm — the commands a newcomer runs: `make serve`, `make test`.
SHELL := /bin/bash
# Builds live outside the clone so they can carry between runs (CI and sessions).
CARGO_TARGET_DIR ?= $(HOME)/.cache/ferrolm/target
export CARGO_TARGET_DIR
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release/ferrolm

.PHONY: build model test fmt clippy generate serve

build:
	$(CARGO) build --release --workspace

# The default model (SmolLM2-135M-Instruct, GGUF Q4_1), fetched once into ~/.cache/ferrolm/models.
model:
	@./models/fetch-default.sh >/dev/null

# Every test, in release mode (debug decodes ~20x slower).
test: model
	$(CARGO) test --release --workspace

generate: build model
	$(BIN) generate --chat --prompt "What is the capital of France?"

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --release --workspace --all-targets

# The HTTP server is the OpenAI server issue's work; until it lands this says so.
serve: build model
	@if $(BIN) serve --help >/dev/null 2>&1; then $(BIN) serve --host 127.0.0.1 --port 8000; \
	else echo "ferrolm serve is not built yet (OpenAI server issue); try: make generate" >&2; exit 2; fi
