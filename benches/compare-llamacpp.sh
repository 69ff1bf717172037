#!/usr/bin/env bash
# Side by side with llama.cpp's llama-server on the same GGUF, same machine, same run:
# builds llama-server once (vendored llama.cpp from the llama-cpp-python sdist, cmake from PyPI,
# no AMX; cached outside the repo; ~20 min on 2 cores), starts it and ferrolm on loopback, runs
# the same `ferrolm bench serve` sweeps against both and prints a table with ratios.
#
#   benches/compare-llamacpp.sh [--model FILE] [--sampling temperature=0.8,top_p=0.95] [REPS]
#
# REPS: repetitions (default 5; medians are reported). --model: any GGUF (default: the default
# model). --sampling: both servers get these request parameters, and llama-server's sampler
# chain is cut to the same steps (top-p, then temperature; its top-k and min-p off), so both do
# the same work; without it requests are greedy. FERROLM_BUILD_ONLY=1 builds llama.cpp and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=5
MODEL=""
TEMP=0.0
TOP_P=1.0
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --sampling)
      IFS=, read -ra kv <<<"$2"
      for p in "${kv[@]}"; do
        case "${p%%=*}" in
          temperature) TEMP=${p#*=} ;;
          top_p) TOP_P=${p#*=} ;;
          *) echo "unknown sampling parameter ${p%%=*} (temperature, top_p)" >&2; exit 2 ;;
        esac
      done
      shift 2 ;;
    *) REPS=$1; shift ;;
  esac
done
CACHE=${FERROLM_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolm/llamacpp}
LLAMA_CPP_PYTHON=0.3.36
BIN=${FERROLM_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/ferrolm/target}/release/ferrolm}
mkdir -p "$CACHE"

# 1. llama-server, built once.
LS="$CACHE/build/bin/llama-server"
if [ ! -x "$LS" ] || [ ! -x "$CACHE/build/bin/llama-quantize" ]; then
  python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install --quiet cmake ninja scikit-build-core
  # The sdist only (no build isolation: pip would otherwise compile cmake from source).
  (cd "$CACHE" && "$CACHE/venv/bin/pip" download --quiet --no-deps --no-binary=llama-cpp-python \
     --no-build-isolation -d "$CACHE/sdist" "llama-cpp-python==$LLAMA_CPP_PYTHON")
  rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
  tar -xzf "$CACHE"/sdist/llama_cpp_python-*.tar.gz -C "$CACHE/src" --strip-components=1
  export PATH="$CACHE/venv/bin:$PATH"
  "$CACHE/venv/bin/cmake" -S "$CACHE/src/vendor/llama.cpp" -B "$CACHE/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON
  "$CACHE/venv/bin/cmake" --build "$CACHE/build" --target llama-server llama-quantize -j "$(nproc)"
fi
[ -n "${FERROLM_BUILD_ONLY:-}" ] && exit 0
[ -n "$MODEL" ] || MODEL=$(./models/fetch-default.sh)
SAMPLERS=()
if [ "$TEMP" != "0.0" ] && [ "$TEMP" != "0" ]; then
  SAMPLERS=(--samplers "top_p;temperature" --top-k 0 --min-p 0.0)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 1 600); do curl -fs "$1/health" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }

P1=$(free_port); P2=$(free_port)
"$LS" -m "$MODEL" --host 127.0.0.1 --port "$P1" -t 2 -tb 2 -np 16 -c 32768 -b 512 --log-disable "${SAMPLERS[@]}" >/dev/null 2>&1 &
LPID=$!
FERROLM_LOG=warn "$BIN" serve "$MODEL" --host 127.0.0.1 --port "$P2" --served-model-name smollm >/dev/null 2>&1 &
FPID=$!
trap 'kill $LPID $FPID 2>/dev/null; wait 2>/dev/null || true' EXIT
wait_up "http://127.0.0.1:$P1"; wait_up "http://127.0.0.1:$P2"

OUT=$(mktemp -d)
run() { # name url conc in out n
  local name=$1 url=$2 conc=$3 in=$4 outl=$5 n=$6 rep=$7
  # A fresh seed per run: no prompt repeats across runs, so neither server's prompt cache
  # turns a prefill into a lookup.
  local seed=$((rep * 1000 + conc * 10 + in))
  "$BIN" bench serve --url "$url" --model smollm --tokenizer "$MODEL" --num-prompts "$n" --input-len "$in" --seed "$seed" \
    --output-len "$outl" --ignore-eos --temperature "$TEMP" --top-p "$TOP_P" --max-concurrency "$conc" --result-file "$OUT/$name-c$conc-i$in-$rep.json" >/dev/null 2>&1
}
for rep in $(seq 1 "$REPS"); do
  for server in llama:"http://127.0.0.1:$P1" ferrolm:"http://127.0.0.1:$P2"; do
    name=${server%%:*}; url=${server#*:}
    run "$name" "$url" 1 128 128 4 "$rep"
    run "$name" "$url" 4 128 128 16 "$rep"
    run "$name" "$url" 16 128 128 32 "$rep"
    run "$name" "$url" 1 512 1 4 "$rep"
  done
done

python3 - "$OUT" "$MODEL" "$TEMP" "$TOP_P" "$REPS" <<'PY'
import json, glob, statistics, sys, os
out, model, temp, top_p, reps = sys.argv[1:6]
def med(name, conc, inl, key):
    vals = [json.load(open(f))[key] for f in glob.glob(f"{out}/{name}-c{conc}-i{inl}-*.json")]
    return statistics.median(vals) if vals else float("nan")
rows = [
    ("decode tok/s, 1 client (128 in / 128 out)", 1, 128, "output_throughput", True),
    ("output tok/s, 4 clients", 4, 128, "output_throughput", True),
    ("output tok/s, 16 clients", 16, 128, "output_throughput", True),
    ("TTFT p50 ms, 16 clients", 16, 128, "median_ttft_ms", False),
    ("prompt tok/s, 512-token prompt", 1, 512, "total_token_throughput", True),
]
sampling = "greedy" if float(temp) == 0 else f"temperature {temp}, top_p {top_p}"
print(f"{os.path.basename(model)}, {sampling}, medians of {reps}")
print(f"{'figure':<44}{'llama-server':>14}{'ferrolm':>12}{'ratio':>8}")
ratios = {}
for label, conc, inl, key, higher in rows:
    a, b = med("llama", conc, inl, key), med("ferrolm", conc, inl, key)
    ratio = (b / a) if a else float("nan")
    ratios[label] = ratio
    print(f"{label:<44}{a:>14.1f}{b:>12.1f}{ratio:>8.2f}")
r = list(ratios.values())
print(f"summary {os.path.basename(model)} ({sampling}): decode {r[0]:.2f}x, 16-client output {r[2]:.2f}x, "
      f"TTFT p50 {r[3]:.2f}x, prompt {r[4]:.2f}x of llama-server")
PY
