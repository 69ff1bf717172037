#!/usr/bin/env bash
# Lays out .build/candle-core: candle-core 0.11.1 from cargo's cache with one change: its
# cudarc dependency uses `dynamic-loading` instead of `dynamic-linking`, so a `--features cuda`
# binary links no CUDA library and opens libcuda/cuBLAS/NVRTC at run time (it starts on
# CPU-only hosts). The workspace's [patch.crates-io] points here. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.11.1
DEST=.build/candle-core
STAMP="$DEST/.ferrolm-patched-$VERSION"
[ -f "$STAMP" ] && exit 0
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
find_crate() { ls "$CARGO_HOME"/registry/cache/*/candle-core-$VERSION.crate 2>/dev/null | head -1 || true; }
crate=$(find_crate)
if [ -z "$crate" ]; then
  # Fetch it through a throwaway manifest (the workspace itself needs this folder to resolve).
  tmp=$(mktemp -d)
  mkdir -p "$tmp/src" && touch "$tmp/src/lib.rs"
  printf '[package]\nname = "fetch-candle"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ncandle-core = "=%s"\n[workspace]\n' "$VERSION" > "$tmp/Cargo.toml"
  cargo fetch --quiet --manifest-path "$tmp/Cargo.toml"
  rm -rf "$tmp"
  crate=$(find_crate)
fi
[ -n "$crate" ] || { echo "candle-core-$VERSION.crate not found in $CARGO_HOME/registry/cache" >&2; exit 1; }
rm -rf "$DEST" .build/candle-core-$VERSION
mkdir -p .build
tar -xzf "$crate" -C .build
mv .build/candle-core-$VERSION "$DEST"
sed -i '/^\[dependencies.cudarc\]/,/^\[/ s/"dynamic-linking"/"dynamic-loading"/' "$DEST/Cargo.toml"
grep -q '"dynamic-loading"' "$DEST/Cargo.toml"
! grep -q '"dynamic-linking"' "$DEST/Cargo.toml"
touch "$STAMP"
