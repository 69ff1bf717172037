#!/usr/bin/env bash
# Installs CUDA 13.0's compiler from PyPI wheels (pinned, with hashes) into a prefix and lays
# out a CUDA_HOME-style folder of links. Build-only: no driver, cuBLAS or NVRTC libraries
# (cudarc opens those at run time on the GPU host). Idempotent. Prints the CUDA_HOME.
#
#   export CUDA_HOME=$(scripts/install-cuda-toolchain.sh)
#
# Env: FERROLM_CUDA_HOME (default ~/.cache/ferrolm/cuda13), PYTHON (default python3).
set -euo pipefail
CUDA_HOME_DIR=${FERROLM_CUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolm/cuda13}
PIP_PREFIX="$CUDA_HOME_DIR.pip"
PYTHON=${PYTHON:-python3}

REQS='
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
'
STAMP="$PIP_PREFIX/.installed-$(printf '%s' "$REQS" | md5sum | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
  echo "installing CUDA 13.0 compiler wheels into $PIP_PREFIX ..." >&2
  rm -rf "$PIP_PREFIX"
  req=$(mktemp --suffix=.txt)
  printf '%s' "$REQS" > "$req"
  # One pip command, so every wheel lands in the same nvidia/cu13 tree.
  "$PYTHON" -m pip install --quiet --no-deps --no-compile --disable-pip-version-check \
    --require-hashes --only-binary=:all: --target "$PIP_PREFIX" -r "$req" >&2
  rm -f "$req"
  touch "$STAMP"
fi
ROOT="$PIP_PREFIX/nvidia/cu13"
for f in bin/nvcc bin/ptxas bin/fatbinary nvvm/bin/cicc include/cuda_bf16.h include/cuda_fp16.h \
         include/crt/host_defines.h include/cccl/nv/target lib/libcudart_static.a; do
  [ -e "$ROOT/$f" ] || { echo "missing $ROOT/$f" >&2; exit 1; }
done
chmod +x "$ROOT"/bin/* "$ROOT"/nvvm/bin/* 2>/dev/null || true
ln -sfn libcudart.so.13 "$ROOT/lib/libcudart.so"
# nvcc.profile finds TOP from nvcc's real path: give it the usual targets/ layout and lib64.
mkdir -p "$ROOT/targets/x86_64-linux"
ln -sfn ../../include "$ROOT/targets/x86_64-linux/include"
ln -sfn ../../lib "$ROOT/targets/x86_64-linux/lib"
ln -sfn lib "$ROOT/lib64"
mkdir -p "$CUDA_HOME_DIR"
for d in bin include nvvm lib lib64 targets; do
  ln -sfn "$ROOT/$d" "$CUDA_HOME_DIR/$d"
done
"$CUDA_HOME_DIR/bin/nvcc" --version >/dev/null
echo "$CUDA_HOME_DIR"
