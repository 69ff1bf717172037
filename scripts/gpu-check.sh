#!/usr/bin/env bash
# The one script a GPU run needs (run on the GPU host, from the repository root):
#   bash scripts/gpu-check.sh [path/to/ferrolm or ferrolm.xz]
# The binary is built on a CPU machine (make build-cuda) and carried. Prints facts, runs
# `ferrolm gpu-check` (kernels vs CPU references, then timings), a PyTorch SDPA reference on
# the same decode shape, and a compact table. Finishes in well under 5 minutes.
set -u
cd "$(dirname "$0")/.." || exit 1
BIN=${1:-.build/gpu/ferrolm}
if [ ! -x "$BIN" ] && [ -f "$BIN.xz" ]; then xz -dc "$BIN.xz" > "$BIN" && chmod +x "$BIN"; fi
[ -x "$BIN" ] || { echo "no binary at $BIN (build with make build-cuda and carry it)" >&2; exit 1; }
TABLE=()
row() { TABLE+=("$(printf '%-44s %s' "$1" "$2")"); }

echo "== GPU"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee /tmp/gpu.txt
row "card" "$(head -1 /tmp/gpu.txt)"
# cuBLAS/NVRTC from wherever the host keeps them, never CUDA's stubs/ folder.
LIBDIRS=$(find / \( -path /proc -o -path /sys \) -prune -o \( -name 'libcublas.so*' -o -name 'libnvrtc.so*' \) -print 2>/dev/null \
  | xargs -r -n1 dirname | grep -v stubs | sort -u | paste -sd: -)
export LD_LIBRARY_PATH="${LIBDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== ferrolm gpu-check"
timeout 180 "$BIN" gpu-check 2>&1 | tee /tmp/ferrolm-gpu-check.txt
row "ferrolm gpu-check" "$(grep -o '[0-9]* passed, [0-9]* failed' /tmp/ferrolm-gpu-check.txt | tail -1)"
row "ferrolm decode attention" "$(grep -o 'decode attention bf16.*' /tmp/ferrolm-gpu-check.txt | sed 's/  */ /g' | cut -c1-80)"
row "device-to-device copy" "$(grep -o 'device-to-device copy.*' /tmp/ferrolm-gpu-check.txt | sed 's/  */ /g' | cut -c1-80)"

echo "== PyTorch SDPA reference (B64, 32 q-heads, 8 kv-heads, 2048 keys, d128, bf16)"
timeout 120 python3 - <<'PY' 2>&1 | tee /tmp/sdpa.txt
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
B, H, KVH, T, D = 64, 32, 8, 2048, 128
q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16)
k = torch.randn(B, KVH, T, D, device="cuda", dtype=torch.bfloat16).repeat_interleave(H // KVH, dim=1)
v = torch.randn_like(k)
kv_bytes = 2 * B * KVH * T * D * 2
for name, be in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)]:
    try:
        with sdpa_kernel(be):
            for _ in range(3): F.scaled_dot_product_attention(q, k, v)
            torch.cuda.synchronize()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(20): F.scaled_dot_product_attention(q, k, v)
            e.record(); torch.cuda.synchronize()
            ms = s.elapsed_time(e) / 20
            print(f"sdpa {name}: {kv_bytes / (ms * 1e-3) / 1e9:.0f} GB/s K+V ({ms:.3f} ms)")
    except Exception as ex:
        print(f"sdpa {name}: failed: {ex}")
PY
row "sdpa cudnn" "$(grep -o 'sdpa cudnn.*' /tmp/sdpa.txt | cut -c13-)"
row "sdpa flash" "$(grep -o 'sdpa flash.*' /tmp/sdpa.txt | cut -c13-)"

echo; echo "== summary"
printf '%s\n' "${TABLE[@]}"
