#!/usr/bin/env bash
# Writes .build/tiny-smollm.gguf (scripts/make-tiny-gguf.py) with the gguf package pinned in
# a venv this script makes. Needs the default model (make model) for its tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF_VERSION="0.19.0"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/ferrolm/venv-gguf-$GGUF_VERSION"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/python" -c "import gguf" 2>/dev/null \
  || "$VENV/bin/pip" install --quiet --disable-pip-version-check "gguf==$GGUF_VERSION" "numpy<3"
SRC=$(./models/fetch-default.sh)
mkdir -p .build
"$VENV/bin/python" scripts/make-tiny-gguf.py "$SRC" .build/tiny-smollm.gguf
echo .build/tiny-smollm.gguf
