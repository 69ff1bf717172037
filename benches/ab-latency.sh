#!/usr/bin/env bash
# A/B of two ferrolm binaries on `bench latency --device cpu`, alternating their order each
# round (this VM's speed drifts): batch 1 (128-token prompt, 128 decode steps) and batch 16
# (128-token prompts, 32 steps). Prints each run and the medians of prefill seconds, decode
# ms per step and average latency, with B/A ratios.
#   benches/ab-latency.sh OLD_BIN NEW_BIN [ROUNDS]
set -euo pipefail
A=$1 B=$2 ROUNDS=${3:-5}
OUT=$(mktemp -d)
run() { # bin label batch out steps
  "$1" bench latency --device cpu --batch-size "$3" --input-len 128 --output-len "$4" \
    --num-iters 3 --output-json "$OUT/$2-b$3-$5.json" >/dev/null 2>&1
}
for r in $(seq 1 "$ROUNDS"); do
  for b in 1 16; do
    steps=$([ "$b" = 1 ] && echo 128 || echo 32)
    if [ $((r % 2)) = 1 ]; then run "$A" A "$b" "$steps" "$r"; run "$B" B "$b" "$steps" "$r";
    else run "$B" B "$b" "$steps" "$r"; run "$A" A "$b" "$steps" "$r"; fi
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for b in (1, 16):
    med = {}
    for side in "AB":
        rs = [json.load(open(f"{out}/{side}-b{b}-{r}.json")) for r in range(1, rounds + 1)]
        med[side] = {k: statistics.median(x[k] for x in rs) for k in ("prefill_secs", "decode_ms_per_step", "avg_latency")}
        print(f"batch {b:2} {side}: " + " ".join(f"{k}={[round(x[k], 4) for x in rs]}" for k in med[side]))
    print(f"batch {b:2} medians A/B: " + " · ".join(
        f"{k} {med['A'][k]:.4f} -> {med['B'][k]:.4f} ({med['B'][k] / med['A'][k]:.3f}x)" for k in med['A']))
PY
