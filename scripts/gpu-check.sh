#!/usr/bin/env bash
# The one script a GPU run needs (run on the GPU host, from the repository root):
#   bash scripts/gpu-check.sh [path/to/ferrolm or ferrolm.xz]
# The binary is built on a CPU machine (make build-cuda) and carried. Prints facts, runs
# `ferrolm gpu-check` (kernels vs CPU references, the whole model on the GPU vs the CPU,
# decode steps replayed from CUDA graphs vs eager, then timings of both decode kernels),
# the 8B timings (batch-1 decode with CUDA graphs, eager, and split projections beside the
# weight-read floor; bench throughput 1000 x 128/128 and 256 x 1024/256, and with the
# per-head decode kernel), a per-stage profile of eager decode steps, GGUF weights on the
# GPU (generate, serve), a PyTorch SDPA reference on the decode shape, HF transformers
# generate() on the same card, and a compact table. About 5 minutes.
# SKIP_HF=1 leaves out the HF runs, SKIP_8B=1 the 8B ones, SKIP_PROFILE=1 the profiles,
# SKIP_GEMMA=1 the Gemma 3 rows, CHECK_ONLY=group,... only those groups of `ferrolm
# gpu-check` (model gemv quant sampling attention timings);
# SKIP_TP_VARIANTS=1 the per-head/pool-keep throughput A/Bs; SAMPLERS the sampled throughput
# runs (0: the host sampler, 1: the device sampler; default both); NOFUSED_RERUN=1 reruns failed
# model checks without the fused kernels; TP_SHAPES / HF_SHAPES pick the shapes
# ("N,IN,OUT ..."), MODES the bf16 batch-1 modes (graphs eager split cublas), QUANTS the
# in-situ types of the quantized 8B runs (q4_k q8_0; "none" for none), PP_QUANTS and
# TP_QUANTS those of them that also run pp512 and bench throughput.
set -u
cd "$(dirname "$0")/.." || exit 1
BIN=${1:-.build/gpu/ferrolm}
if [ ! -x "$BIN" ] && [ -f "$BIN.xz" ]; then xz -dc "$BIN.xz" > "$BIN" && chmod +x "$BIN"; fi
[ -x "$BIN" ] || { echo "no binary at $BIN (build with make build-cuda and carry it)" >&2; exit 1; }
TABLE=()
# Rows also go to $OUT/summary.txt as they are made, so a run cut short keeps its results.
row() { TABLE+=("$(printf '%-44s %s' "$1" "$2")"); printf '%-44s %s\n' "$1" "$2" >> "${OUT:-/tmp}/summary.txt"; }

echo "== GPU"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee /tmp/gpu.txt
row "card" "$(head -1 /tmp/gpu.txt)"
# cuBLAS/NVRTC from wherever the host keeps them, never CUDA's stubs/ folder.
LIBDIRS=$(find / \( -path /proc -o -path /sys \) -prune -o \( -name 'libcublas.so*' -o -name 'libnvrtc.so*' -o -name 'libcurand.so*' \) -print 2>/dev/null \
  | xargs -r -n1 dirname | grep -v stubs | sort -u | paste -sd: -)
export LD_LIBRARY_PATH="${LIBDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== ferrolm gpu-check"
timeout 150 "$BIN" gpu-check ${CHECK_ONLY:+--only "$CHECK_ONLY"} 2>&1 | tee /tmp/ferrolm-gpu-check.txt
row "ferrolm gpu-check" "$(grep -o '[0-9]* passed, [0-9]* failed' /tmp/ferrolm-gpu-check.txt | tail -1)"
while read -r l; do row "$(echo "$l" | cut -c1-44)" "$(echo "$l" | cut -c60- | cut -c1-90)"; done < <(grep '^model ' /tmp/ferrolm-gpu-check.txt)
if [ -n "${NOFUSED_RERUN:-}" ] && grep '^model ' /tmp/ferrolm-gpu-check.txt | grep -v 'cuda graphs' | grep -q FAIL; then
  echo "== model checks again without the fused kernels (FERROLM_NO_FUSED=1)"
  FERROLM_NO_FUSED=1 timeout 120 "$BIN" gpu-check --model-only 2>&1 | grep '^model ' | grep -v 'cuda graphs' | tee /tmp/nofused.txt
  while read -r l; do row "nofused $(echo "$l" | cut -c1-36)" "$(echo "$l" | cut -c60- | cut -c1-90)"; done < /tmp/nofused.txt
fi
while read -r l; do row "$(echo "$l" | cut -c1-44)" "$(echo "$l" | cut -c60- | cut -c1-90)"; done \
  < <(grep -E '^(decode attention|attention / copy)' /tmp/ferrolm-gpu-check.txt)
row "device-to-device copy" "$(grep -o 'device-to-device copy.*' /tmp/ferrolm-gpu-check.txt | sed 's/  */ /g' | cut -c1-80)"

# Gemma 3 on the GPU (sliding windows, its attention scale, head size 32): the fixture's
# shape with dummy weights through the end-to-end checks, then its real weights (safetensors
# and GGUF) generating greedily on the GPU and the CPU, in f32 (informational: attention
# sums in another order may break a near-tie of these random weights).
if [ -z "${SKIP_GEMMA:-}" ]; then
  echo "== gpu-check: the Gemma 3 fixture's shape (models/fixtures/hf/gemma3)"
  timeout 120 "$BIN" gpu-check --model-only --model-config models/fixtures/hf/gemma3/config.json 2>&1 | tee /tmp/gemma-check.txt
  while read -r l; do row "gemma3 $(echo "$l" | cut -c7-40)" "$(echo "$l" | cut -c60- | cut -c1-90)"; done < <(grep '^model ' /tmp/gemma-check.txt)
  for G in models/fixtures/hf/gemma3 models/fixtures/gguf/gemma3.gguf; do
    GA=$(timeout 60 "$BIN" generate --device cpu --dtype float32 --model "$G" --prompt "The capital of France is" --max-tokens 24 2>/dev/null)
    GB=$(timeout 60 "$BIN" generate --device cuda --dtype float32 --model "$G" --prompt "The capital of France is" --max-tokens 24 2>/tmp/gen-gemma.err)
    tail -2 /tmp/gen-gemma.err
    row "gemma3 generate cuda vs cpu $(basename "$G")" "$([ -n "$GB" ] && [ "$GA" == "$GB" ] && echo same || echo "DIFFERENT: cpu=${GA:0:30} cuda=${GB:0:30}")"
  done
fi

# Quantized linear layers end to end on real (fixture) weights: the Qwen3 fixture (head size
# 32; the Llama fixture's 16 has no CUDA kernels) quantized at load to Q8_0 / Q4_0 (the layers
# whose width is a multiple of 32), greedy on both devices (informational: the GPU quantizes
# activations to 8 bits as llama.cpp's MMVQ, the CPU as ggml).
for q in q8_0 q4_0; do
  GA=$(timeout 60 "$BIN" generate --device cpu --dtype float32 --model models/fixtures/hf/qwen3 -q $q --prompt "The capital of France is" --max-tokens 24 2>/dev/null)
  GB=$(timeout 60 "$BIN" generate --device cuda --dtype float32 --model models/fixtures/hf/qwen3 -q $q --prompt "The capital of France is" --max-tokens 24 2>/tmp/gen-q.err)
  tail -2 /tmp/gen-q.err
  row "qwen3 fixture $q generate cuda vs cpu" "$([ -n "$GB" ] && [ "$GA" == "$GB" ] && echo same || echo "DIFFERENT: cpu=${GA:0:30} cuda=${GB:0:30}")"
done

CFG8B=models/configs/llama-3.1-8b.json
OUTD=${OUT:-/tmp}
# "<ms/token> ms/token · floor <ms> (<GB> at <copy>) · <x> floor" from a bench latency JSON.
floor_line() {
  python3 - "$1" "${COPY:-0}" <<'PY' 2>&1
import json, sys
r = json.load(open(sys.argv[1])); copy = float(sys.argv[2])
if not copy:  # no copy-rate row (CHECK_ONLY without timings): no floor to show
    print(f"{r['decode_ms_per_step']:.2f} ms/token · {r['weight_bytes']/1e9:.2f} GB of weights")
    sys.exit(0)
floor = r["weight_bytes"] / (copy * 1e9) * 1e3
print(f"{r['decode_ms_per_step']:.2f} ms/token · weight-read floor {floor:.2f} ms "
      f"({r['weight_bytes']/1e9:.2f} GB at {copy:.0f} GB/s) · {r['decode_ms_per_step']/floor:.2f}x floor")
PY
}
# The 8B timings first (what the GPU speed issue measures): batch-1 decode with CUDA graphs
# (the default) and with --enforce-eager, beside the weight-read floor; then throughput.
if [ -z "${SKIP_8B:-}" ]; then
  COPY=$(grep -o 'device-to-device copy 1 GiB *PASS *[0-9]*' /tmp/ferrolm-gpu-check.txt | head -1 | grep -o '[0-9]*$')
  # graphs: the defaults (CUDA graphs, stacked projections, skinny matmul); eager:
  # --enforce-eager; split: FERROLM_STACK_PROJ=0; cublas: FERROLM_GEMV=0.
  for mode in ${MODES:-graphs eager split cublas}; do
    FLAG=""; [ "$mode" = eager ] && FLAG="--enforce-eager"
    STACK=1; [ "$mode" = split ] && STACK=0
    GEMV=1; [ "$mode" = cublas ] && GEMV=0
    echo "== ferrolm bench latency ($mode): Llama-3.1-8B shape, dummy bf16, batch 1, 128 in / 128 out"
    FERROLM_STACK_PROJ=$STACK FERROLM_GEMV=$GEMV timeout 120 "$BIN" bench latency --model $CFG8B --load-format dummy --dtype bfloat16 --device cuda $FLAG \
      --max-model-len 4096 --batch-size 1 --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 3 \
      --output-json "$OUTD/latency-8b-$mode.json" 2>&1 | tee /tmp/lat.txt
    row "8B bf16 batch-1 decode ($mode)" "$(floor_line "$OUTD/latency-8b-$mode.json" | tail -1)"
  done
  # Quantized 8B: random GGUF blocks of each type on the GPU (our kernels), bf16 activations:
  # batch-1 decode beside the floor of the quantized bytes, and a 512-token prefill.
  for q in ${QUANTS:-q4_k q8_0}; do
    [ "$q" = none ] && continue
    echo "== ferrolm bench latency: 8B shape, dummy $q blocks, batch 1, 128 in / 128 out"
    timeout 150 "$BIN" bench latency --model $CFG8B --load-format dummy --dtype bfloat16 --quantization $q --device cuda \
      --max-model-len 4096 --batch-size 1 --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 3 \
      --output-json "$OUTD/latency-8b-$q.json" 2>&1 | tee /tmp/lat.txt
    row "8B $q batch-1 decode (graphs)" "$(floor_line "$OUTD/latency-8b-$q.json" | tail -1)"
    case " ${PP_QUANTS:-${QUANTS:-q4_k q8_0}} " in *" $q "*) ;; *) continue ;; esac
    echo "== ferrolm bench latency: 8B shape, dummy $q blocks, batch 1, 512 in / 1 out (pp512)"
    timeout 150 "$BIN" bench latency --model $CFG8B --load-format dummy --dtype bfloat16 --quantization $q --device cuda \
      --max-model-len 4096 --batch-size 1 --input-len 512 --output-len 1 --num-iters-warmup 1 --num-iters 3 \
      --output-json "$OUTD/pp512-8b-$q.json" 2>&1 | tail -3
    row "8B $q pp512 (prefill + first token)" "$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["prefill_secs"]; print(f"{512/p:.0f} tok/s ({p*1e3:.1f} ms)")' "$OUTD/pp512-8b-$q.json" 2>&1 | tail -1)"
  done
  for shape in ${TP_SHAPES:-1000,128,128 256,1024,256}; do
    set -- ${shape//,/ }
    echo "== ferrolm bench throughput: 8B dummy bf16, $1 x $2/$3"
    timeout 150 "$BIN" bench throughput --model $CFG8B --load-format dummy --dtype bfloat16 --device cuda \
      --max-model-len 4096 --num-prompts $1 --input-len $2 --output-len $3 \
      --output-json "$OUTD/throughput-$1x$2-$3.json" 2>&1 | tee /tmp/tp.txt
    row "ferrolm throughput $1x$2/$3" "$(grep -o 'Throughput: .*' /tmp/tp.txt | cut -c13- | cut -c1-90 || echo FAILED)"
    row "  steps" "$(grep -o 'Steps: .*' /tmp/tp.txt | cut -c8- | cut -c1-120)"
    grep -o 'cuda graphs: .*' /tmp/tp.txt | head -1
    # Temperature 0.8 / top-p 0.95 on every request: drawn on the host (every logits row
    # copied back, FERROLM_DEVICE_SAMPLER=0), then by the device sampler (the default on a GPU).
    for ds in ${SAMPLERS:-0 1}; do
      echo "== the same, sampled (temperature 0.8, top-p 0.95), FERROLM_DEVICE_SAMPLER=$ds"
      FERROLM_DEVICE_SAMPLER=$ds timeout 150 "$BIN" bench throughput --model $CFG8B --load-format dummy --dtype bfloat16 --device cuda \
        --max-model-len 4096 --num-prompts $1 --input-len $2 --output-len $3 --temperature 0.8 --top-p 0.95 \
        --output-json "$OUTD/throughput-sampled$ds-$1x$2-$3.json" 2>&1 | tee /tmp/tp.txt
      row "ferrolm throughput $1x$2/$3 t0.8 p0.95 dev$ds" "$(grep -o 'Throughput: .*' /tmp/tp.txt | cut -c13- | cut -c1-90 || echo FAILED)"
      row "  steps" "$(grep -o 'Steps: .*' /tmp/tp.txt | cut -c8- | cut -c1-120)"
    done
    for q in ${TP_QUANTS:-${QUANTS:-q4_k q8_0}}; do
      [ "$q" = none ] && continue
      echo "== the same with dummy $q blocks"
      timeout 150 "$BIN" bench throughput --model $CFG8B --load-format dummy --dtype bfloat16 --quantization $q --device cuda \
        --max-model-len 4096 --num-prompts $1 --input-len $2 --output-len $3 \
        --output-json "$OUTD/throughput-$q-$1x$2-$3.json" 2>&1 | tee /tmp/tp.txt
      row "ferrolm throughput $1x$2/$3 $q" "$(grep -o 'Throughput: .*' /tmp/tp.txt | cut -c13- | cut -c1-90 || echo FAILED)"
    done
    [ -n "${SKIP_TP_VARIANTS:-}" ] && continue
    echo "== the same with the per-head decode kernel (FERROLM_DECODE_KERNEL=per-head)"
    FERROLM_DECODE_KERNEL=per-head timeout 150 "$BIN" bench throughput --model $CFG8B --load-format dummy --dtype bfloat16 \
      --device cuda --max-model-len 4096 --num-prompts $1 --input-len $2 --output-len $3 \
      --output-json "$OUTD/throughput-perhead-$1x$2-$3.json" 2>&1 | tee /tmp/tp.txt
    row "ferrolm throughput $1x$2/$3 per-head attn" "$(grep -o 'Throughput: .*' /tmp/tp.txt | cut -c13- | cut -c1-90 || echo FAILED)"
    echo "== the same with a caching memory pool (FERROLM_POOL_KEEP=1)"
    FERROLM_POOL_KEEP=1 timeout 150 "$BIN" bench throughput --model $CFG8B --load-format dummy --dtype bfloat16 \
      --device cuda --max-model-len 4096 --num-prompts $1 --input-len $2 --output-len $3 \
      --output-json "$OUTD/throughput-poolkeep-$1x$2-$3.json" 2>&1 | tee /tmp/tp.txt
    row "ferrolm throughput $1x$2/$3 pool keep" "$(grep -o 'Throughput: .*' /tmp/tp.txt | cut -c13- | cut -c1-90 || echo FAILED)"
    row "  steps (pool keep)" "$(grep -o 'Steps: .*' /tmp/tp.txt | cut -c8- | cut -c1-120)"
  done
fi
# Where a step's time goes: eager steps with a device sync after each stage
# (FERROLM_PROFILE=1; the syncs add their own cost, the shares are what matter).
if [ -z "${SKIP_8B:-}" ] && [ -z "${SKIP_PROFILE:-}" ]; then
  for b in 1 256 256k; do
    # 256k: batch 256 with the caching memory pool (FERROLM_POOL_KEEP=1).
    PK=0; case $b in *k) PK=1 ;; esac
    echo "== profile: 8B bf16 eager, batch ${b%k}, 128 in / 16 out (pool keep $PK)"
    FERROLM_POOL_KEEP=$PK FERROLM_PROFILE=1 timeout 120 "$BIN" bench latency --model $CFG8B --load-format dummy --dtype bfloat16 --device cuda \
      --enforce-eager --max-model-len 4096 --batch-size ${b%k} --input-len 128 --output-len 16 --num-iters-warmup 1 --num-iters 1 \
      2>&1 | tee /tmp/prof.txt | grep -A30 '^profile'
    row "profile b$b decode ms/step by stage" "$(grep -o '^profile decode: .*' /tmp/prof.txt | cut -c17- | cut -c1-200 || echo FAILED)"
    row "profile b$b prefill ms/step by stage" "$(grep -o '^profile prefill: .*' /tmp/prof.txt | cut -c18- | cut -c1-200)"
  done
fi

# GGUF weights on the GPU (candle's CUDA quantized matmul): a small random GGUF with the
# default model's tokenizer (scripts/make-tiny-gguf.py; the default model is too big to carry).
TINY=${TINY_GGUF:-.build/tiny-smollm.gguf}
if [ -f "$TINY" ]; then
  echo "== GGUF on the GPU: generate (cuda vs cpu) and serve --device cuda"
  GA=$(timeout 60 "$BIN" generate --device cpu --model "$TINY" --prompt "The capital of France is" --max-tokens 24 2>/dev/null)
  GB=$(timeout 60 "$BIN" generate --device cuda --model "$TINY" --prompt "The capital of France is" --max-tokens 24 2>/tmp/gen-cuda.err)
  tail -2 /tmp/gen-cuda.err
  # Informational: the GPU's quantized matmul rounds activations its own way (f32 scales,
  # 32-value blocks for every type), so a near-tie on a random model may pick another token.
  row "gguf generate cuda vs cpu (greedy, info)" "$([ -n "$GB" ] && [ "$GA" == "$GB" ] && echo same || echo "DIFFERENT: cpu=${GA:0:40} cuda=${GB:0:40}")"
  "$BIN" serve "$TINY" --device cuda --port 8111 --gpu-memory-utilization 0.3 > /tmp/serve.log 2>&1 &
  SPID=$!
  timeout 120 python3 - <<'PY' 2>&1 | tee /tmp/serve-check.txt
import json, time, urllib.request
base = "http://127.0.0.1:8111"
def call(path, body=None):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body else None,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read().decode()
for _ in range(100):
    try:
        if call("/health")[0] == 200: break
    except Exception: time.sleep(1)
st, chat = call("/v1/chat/completions", {"model": "tiny-smollm", "max_tokens": 16,
                "messages": [{"role": "user", "content": "Hi"}]})
u = json.loads(chat)["usage"]
st2, stream = call("/v1/completions", {"model": "tiny-smollm", "prompt": "Hello", "max_tokens": 8, "stream": True})
chunks = stream.count("data: ") - 1
_, metrics = call("/metrics")
kv = [l for l in metrics.splitlines() if l.startswith("vllm:num_gpu_blocks") or "cache_config_info" in l][:1]
print(f"serve cuda: chat {st} usage {u['prompt_tokens']}+{u['completion_tokens']} · stream {st2} {chunks} chunks · "
      f"{sum(1 for l in metrics.splitlines() if l.startswith('vllm:'))} vllm: series")
PY
  kill $SPID 2>/dev/null; wait $SPID 2>/dev/null
  grep -E "kv cache|cuda graphs|ERROR|error" /tmp/serve.log | head -4
  row "serve: cuda graphs" "$(grep -o 'cuda graphs: .*' /tmp/serve.log | cut -c14- | cut -c1-90 || echo none)"
  row "serve --device cuda (tiny GGUF)" "$(grep -o 'serve cuda: .*' /tmp/serve-check.txt | cut -c13- || echo FAILED)"
fi

echo "== PyTorch SDPA reference (B64, 32 q-heads, 8 kv-heads, 2048 keys, d128, bf16)"
timeout 60 python3 - <<'PY' 2>&1 | tee /tmp/sdpa.txt
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

if [ -z "${SKIP_HF:-}" ]; then
  for shape in ${HF_SHAPES:-1000,128,128 256,1024,256}; do
    set -- ${shape//,/ }
    echo "== HF transformers generate(): 8B random bf16, $1 x $2/$3, batch 256"
    timeout 100 python3 scripts/hf_generate_baseline.py $CFG8B $1 $2 $3 2>&1 | grep -v -i warn | tail -3 | tee /tmp/hf.txt
    row "hf generate $1x$2/$3" "$(grep -o 'batch 256: .*' /tmp/hf.txt | cut -c12- | cut -c1-90)"
  done
fi

echo; echo "== summary"
printf '%s\n' "${TABLE[@]}"
