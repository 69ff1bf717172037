#!/usr/bin/env bash
# Checks the --features cuda binary on this host: it links no CUDA library, it starts and
# serves the CPU path here, and GPU-only checks are skipped with a message when no GPU is present.
set -euo pipefail
BIN=${1:?usage: check-cuda-build.sh path/to/ferrolm}
pass=0; fail=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
if ldd "$BIN" | grep -Eq 'libcuda|libcublas|libcudart|libnvrtc|libcurand'; then bad "links no CUDA library"; ldd "$BIN"; else ok "links no CUDA library"; fi
if "$BIN" --version >/dev/null; then ok "starts on this host"; else bad "starts on this host"; fi
if "$BIN" gpu-check --help >/dev/null 2>&1; then ok "has gpu-check"; else bad "has gpu-check"; fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  if "$BIN" gpu-check; then ok "gpu-check"; else bad "gpu-check"; fi
else
  echo "skip gpu-check: no GPU on this host (run scripts/gpu-check.sh on a GPU machine)"
  # Without a driver the CUDA path must fail cleanly, not crash.
  out=$("$BIN" gpu-check 2>&1 || true)
  if echo "$out" | grep -q "no CUDA driver" && ! echo "$out" | grep -q "panicked"; then
    ok "gpu-check fails cleanly without a GPU"
  else
    bad "gpu-check without a GPU: $out"
  fi
  # The CUDA build still serves the CPU path here.
  gen=$("$BIN" generate --prompt "The capital of France is" --max-tokens 4 2>/dev/null || true)
  if [[ "$gen" == *Paris* ]]; then
    ok "CPU generation with the CUDA build"
  else
    bad "CPU generation with the CUDA build"
  fi
fi
echo "cuda-build: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
