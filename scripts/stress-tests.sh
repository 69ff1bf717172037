#!/usr/bin/env bash
# Runs the server's and the engine's integration test binaries ROUNDS times in a row while
# `stress-ng --cpu N` loads every core (CI runs on a loaded 2-core machine): a test that
# depends on timing fails here. Installs stress-ng (Debian) if missing.
#   scripts/stress-tests.sh [ROUNDS] [STRESSORS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
CPUS=${2:-2}
command -v stress-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq stress-ng; }
CARGO=${CARGO:-cargo}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ferrolm/target}
# The soak is a load test of its own: a short one per round (it still crosses every case).
export FERROLM_SOAK_SECS=${FERROLM_SOAK_SECS:-15}
# Build first, unloaded; the rounds run the integration test binaries themselves.
mapfile -t BINS < <($CARGO test --release -p ferrolm -p ferrolm-engine --tests --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["manifest_path"].rsplit("/", 1)[0] + " " + m["executable"])
')
[ "${#BINS[@]}" -gt 0 ] || { echo "no test binaries" >&2; exit 1; }
stress-ng --cpu "$CPUS" --timeout 7200s --quiet &
STRESS=$!
trap 'kill $STRESS 2>/dev/null; wait $STRESS 2>/dev/null || true' EXIT
pass=0 fail=0
for r in $(seq 1 "$ROUNDS"); do
  start=$SECONDS
  for entry in "${BINS[@]}"; do
    dir=${entry%% *} bin=${entry#* } name=$(basename "${entry#* }")
    # Each test binary runs from its crate's folder, as cargo runs it.
    if (cd "$dir" && "$bin") > "/tmp/stress-$name-$r.log" 2>&1; then
      pass=$((pass + 1))
    else
      fail=$((fail + 1))
      echo "round $r: $name FAILED (log: /tmp/stress-$name-$r.log)"
      grep -E "panicked|FAILED|failed" "/tmp/stress-$name-$r.log" | head -5
    fi
  done
  echo "round $r: $((SECONDS - start)) s"
done
echo "stress: $pass passed, $fail failed"
[ "$fail" = 0 ]
