#!/usr/bin/env bash
# Builds ./dump against the llama.cpp that benches/compare-llamacpp.sh builds and caches.
set -euo pipefail
cd "$(dirname "$0")"
CACHE=${FERROLM_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolm/llamacpp}
SRC="$CACHE/src/vendor/llama.cpp" LIB="$CACHE/build/bin"
[ -f "$LIB/libllama.so" ] || { echo "no llama.cpp build in $CACHE: run benches/compare-llamacpp.sh first" >&2; exit 1; }
g++ -O2 -std=c++17 dump.cpp -I"$SRC/include" -I"$SRC/ggml/include" -L"$LIB" -lllama -lggml -lggml-base \
  -Wl,-rpath,"$LIB" -o dump
echo "$(pwd)/dump"
