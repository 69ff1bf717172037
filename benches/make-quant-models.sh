#!/usr/bin/env bash
# The CPU quant kernels' test files (cached outside git; run by hand or by the bench scripts):
# the default model requantized by llama.cpp's llama-quantize to Q4_K_M, Q5_K_M, Q6_K, Q8_0 and
# Q4_0, and a random Llama shape whose every dimension is a multiple of 256 (so every tensor can
# be a K-quant; on the default model only ffn_down can), written as an f32 GGUF with the `gguf`
# package and the default model's tokenizer, then quantized to Q4_K_M. llama-quantize comes from
# the llama.cpp build of benches/compare-llamacpp.sh (built there if missing).
#
#   benches/make-quant-models.sh        prints the folder holding the files
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${FERROLM_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolm/llamacpp}
OUT=${FERROLM_QUANT_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolm/models/quant}
MODEL=$(./models/fetch-default.sh)
Q="$CACHE/build/bin/llama-quantize"
if [ ! -x "$Q" ]; then
  FERROLM_BUILD_ONLY=1 benches/compare-llamacpp.sh >&2
fi
mkdir -p "$OUT"
for t in Q4_K_M Q5_K_M Q6_K Q8_0 Q4_0; do
  f="$OUT/smollm2-135m-$t.gguf"
  [ -s "$f" ] || "$Q" --allow-requantize "$MODEL" "$f" "$t" 2 >"$f.log" 2>&1 || { cat "$f.log" >&2; exit 1; }
done
K="$OUT/random-llama-768-f32.gguf"
if [ ! -s "$OUT/random-llama-768-Q4_K_M.gguf" ]; then
  "$CACHE/venv/bin/pip" install --quiet "gguf==0.17.1" numpy >&2
  "$CACHE/venv/bin/python" benches/random_llama_gguf.py "$MODEL" "$K" >&2
  "$Q" "$K" "$OUT/random-llama-768-Q4_K_M.gguf" Q4_K_M 2 >"$OUT/random-llama-768-Q4_K_M.log" 2>&1
  rm -f "$K"
fi
echo "$OUT"
