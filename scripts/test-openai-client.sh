#!/usr/bin/env bash
# Drives a running `ferrolm serve` with the official `openai` Python package (pinned, in a
# venv this script makes), with strict response validation: any off-shape response fails.
#
#   scripts/test-openai-client.sh [MODEL [--no-chat] [--expect=TEXT]]   (default: the default
#   model; TEXT: how its greedy completion of "The capital of France is" begins, " Paris")
set -euo pipefail
cd "$(dirname "$0")/.."
OPENAI_VERSION="3.57.0"
VENV="${FERROLM_OPENAI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolm/venv-openai-$OPENAI_VERSION}"
BIN="${FERROLM_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/ferrolm/target}/release/ferrolm}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null \
  || "$VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MODEL_ARG=("${1:-}")
[ -n "${1:-}" ] || MODEL_ARG=()
FERROLM_LOG=warn "$BIN" serve "${MODEL_ARG[@]}" --port "$PORT" --max-model-len 2048 \
  --kv-cache-memory-bytes $((128 << 20)) --enable-auto-tool-choice --tool-call-parser hermes \
  --reasoning-parser qwen3 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  if curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
NAME=$(curl -fs "http://127.0.0.1:$PORT/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
"$VENV/bin/python" tests/openai/client_test.py "http://127.0.0.1:$PORT/v1" "$NAME" "${@:2}"
