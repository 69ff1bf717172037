#!/usr/bin/env bash
# Fuzzes ferrolm's readers of untrusted input (fuzz/: GGUF reader, chat templates, tokenizer,
# detokenizer, safetensors in ferrolm-formats; request checks and SSE framing in ferrolm-protocol) for SECONDS per target (default 20), and prints per
# target the runs, runs/s, corpus size and crashes, and the build and run times. A crash, a
# timeout (an input running over 10 s) or an out-of-memory fails the script; its input is in
# fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS]     (make fuzz; FUZZ_SECONDS=60 make fuzz)
#
# Installs cargo-fuzz into ~/.cargo/bin when missing. cargo-fuzz passes nightly-only flags
# (sanitizers, coverage instrumentation); RUSTC_BOOTSTRAP=1 lets the stable toolchain take
# them. Builds go to $FUZZ_TARGET_DIR (default $CARGO_TARGET_DIR/fuzz), never the main target
# dir. Seeds are fuzz/corpus/<target> (committed, read only); what the fuzzer finds goes to
# $FUZZ_TARGET_DIR/corpus/<target>, emptied first so that a run's time stays its SECONDS
# (libFuzzer replays its whole corpus before it starts the clock's checks).
#
# Environment: FUZZ_TARGETS (default: every target), FUZZ_KEEP_CORPUS=1 (start from the
# last run's finds too: long manual runs), FUZZ_SANITIZER (address; none is faster and
# catches panics, aborts and timeouts but not memory errors in unsafe code).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-${FUZZ_SECONDS:-20}}
CARGO_FUZZ_VERSION=0.13.2
TARGET_DIR=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/ferrolm/target}/fuzz}
SANITIZER=${FUZZ_SANITIZER:-address}
TARGETS=${FUZZ_TARGETS:-gguf_read chat_template tokenizer detokenizer request sse safetensors_read}

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION ..." >&2
  # Its own target dir: cargo install would otherwise build in (and lock) $CARGO_TARGET_DIR.
  CARGO_TARGET_DIR="$TARGET_DIR/install" cargo install --quiet --locked cargo-fuzz \
    --version "$CARGO_FUZZ_VERSION"
fi
export RUSTC_BOOTSTRAP=1
# The tokenizer target reads the default model's vocabulary.
FERROLM_FUZZ_MODEL=$(./models/fetch-default.sh)
export FERROLM_FUZZ_MODEL

# cargo-fuzz's default build: release optimizations with debug assertions and overflow checks.
flags=(-s "$SANITIZER" --target-dir "$TARGET_DIR")
start=$SECONDS
cargo fuzz build "${flags[@]}"
build_s=$((SECONDS - start))
echo "fuzz: built the targets in ${build_s}s (sanitizer $SANITIZER, $TARGET_DIR)"

mkdir -p "$TARGET_DIR/logs"
failed=()
total_start=$SECONDS
printf '%-14s %10s %8s %7s %8s %6s\n' target runs runs/s corpus crashes secs
for t in $TARGETS; do
  work="$TARGET_DIR/corpus/$t"
  log="$TARGET_DIR/logs/$t.log"
  [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ] || rm -rf "$work"
  mkdir -p "$work"
  extra=()
  [ -f "fuzz/dict/$t.dict" ] && extra+=("-dict=fuzz/dict/$t.dict")
  # Each gguf_read input builds a tokenizer, and `tokenizers` keeps a small thread-local BPE
  # cache entry per instance it ever encoded with (reachable, so no leak report), which makes
  # LeakSanitizer scan the heap after every input: 20x slower.
  [ "$t" = gguf_read ] && extra+=(-detect_leaks=0)
  start=$SECONDS
  crashes=0
  # The first corpus dir takes new finds; the seeds are only read.
  if ! cargo fuzz run "${flags[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
    crashes=1
    failed+=("$t")
  fi
  secs=$((SECONDS - start))
  # A run that died early has none of these lines: "?" then.
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  corpus=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' "$log" | tail -n 1)
  printf '%-14s %10s %8s %7s %8s %6s\n' "$t" "${runs:-?}" "${rate:-?}" "${corpus:-?}" \
    "$crashes" "$secs"
  if [ "$crashes" -ne 0 ]; then
    echo "--- $t failed; the end of $log:" >&2
    tail -n 40 "$log" >&2
  fi
done
echo "fuzz: ran ${SECONDS_PER_TARGET}s per target in $((SECONDS - total_start))s; build ${build_s}s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/; keep each as a regression test)" >&2
  exit 1
fi
