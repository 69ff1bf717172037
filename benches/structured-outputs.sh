#!/usr/bin/env bash
# What structured outputs cost: one `ferrolm serve`, the same `ferrolm bench serve` load (16
# concurrent streams, 128 prompt / 128 output tokens, greedy, EOS ignored) with every output
# constrained by a JSON schema (an array of at least 50 bounded objects, so all 128 tokens are
# masked) and without, alternating, REPS times each; prints the medians of mean inter-token
# latency and output throughput, their ratio, and the p50/p99 mask time per token from the
# server's ferrolm:structured_output_mask_seconds histogram.
#
#   benches/structured-outputs.sh [REPS]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
BIN=${FERROLM_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/ferrolm/target}/release/ferrolm}
MODEL=$(./models/fetch-default.sh)
SCHEMA=benches/fixtures/structured-bench-schema.json
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
FERROLM_LOG=warn "$BIN" serve "$MODEL" --served-model-name smollm --port "$PORT" --max-model-len 2048 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.1
done
OUT=$(mktemp -d)
run() { # name seed [extra args]
  local name=$1 seed=$2; shift 2
  # A fresh seed per run: no prompt repeats, so the prefix cache favours neither side.
  "$BIN" bench serve --url "http://127.0.0.1:$PORT" --model smollm --tokenizer "$MODEL" --num-prompts 32 \
    --input-len 128 --output-len 128 --ignore-eos --max-concurrency 16 --seed "$seed" \
    --result-file "$OUT/$name-$seed.json" "$@" >/dev/null 2>&1
}
run warmup 0
for rep in $(seq 1 "$REPS"); do
  run plain "$((rep * 2))"
  run schema "$((rep * 2 + 1))" --structured-json-schema "$SCHEMA"
done
curl -fs "http://127.0.0.1:$PORT/metrics" >"$OUT/metrics.txt"
python3 - "$OUT" "$REPS" <<'PY'
import glob, json, re, statistics, sys
out, reps = sys.argv[1], sys.argv[2]
def med(name, key):
    return statistics.median(json.load(open(f))[key] for f in glob.glob(f"{out}/{name}-[1-9]*.json"))
itl = {n: med(n, "mean_itl_ms") for n in ("plain", "schema")}
tput = {n: med(n, "output_throughput") for n in ("plain", "schema")}
buckets = []
for line in open(f"{out}/metrics.txt"):
    m = re.match(r'ferrolm:structured_output_mask_seconds_bucket\{.*le="([^"]+)".*\} (\S+)', line)
    if m:
        buckets.append((float(m.group(1)), float(m.group(2))))
total = buckets[-1][1] if buckets else 0
def q(p):
    for le, c in buckets:
        if total and c >= p * total:
            return le
    return float("nan")
print(f"16 clients, 128/128, {reps} reps (medians): mean ITL {itl['plain']:.1f} ms plain, {itl['schema']:.1f} ms with a JSON schema "
      f"({itl['schema'] / itl['plain']:.3f}x); output {tput['plain']:.1f} vs {tput['schema']:.1f} tok/s "
      f"({tput['schema'] / tput['plain']:.3f}x)")
print(f"mask time per token over {int(total)} masks: p50 <= {q(0.5) * 1e3:.3f} ms, p99 <= {q(0.99) * 1e3:.3f} ms (histogram bucket bounds)")
PY
