// Paged attention for decode: one query per sequence, keys and values read through the
// block table, GQA (query head h reads KV head h / (num_heads / num_kv_heads)), f32
// accumulation with an online softmax.
//
// Grid (num_heads, num_seqs, num_partitions), 128 threads = 4 warps. Each warp walks keys
// w, w + 4, ... of its partition; lane l holds dims [l*DPL, (l+1)*DPL) of q and of its
// running output, so a key's dot product is one warp reduction and the K/V row reads are
// coalesced. Warps are merged in shared memory at the end. With a sliding window
// (window > 0) a sequence's keys start at context - window.
//
// With one partition the kernel writes the normalised output. With several (split-K, for
// long contexts) each partition writes its normalised partial output, its max logit and its
// exp-sum; paged_attention_reduce_* combines them.
#include "common.cuh"
#include <float.h>

#define NUM_WARPS 4
#define MAX_HEAD_DIM 256

template <typename T, int DPL>
__device__ void paged_attention(T* __restrict__ out, float* __restrict__ part_out,
                                float* __restrict__ part_max, float* __restrict__ part_sum,
                                const T* __restrict__ q, const T* __restrict__ k_cache,
                                const T* __restrict__ v_cache,
                                const int32_t* __restrict__ block_tables,
                                const int32_t* __restrict__ context_lens, int max_blocks_per_seq,
                                int num_heads, int num_kv_heads, int block_size, float scale,
                                int partition_size, int window) {
  constexpr int HD = DPL * 32;
  const int head = blockIdx.x, seq = blockIdx.y, part = blockIdx.z;
  const int num_parts = gridDim.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kv_head = head / (num_heads / num_kv_heads);
  const int ctx = context_lens[seq];
  // A sliding window (window > 0) sees the last `window` keys; partitions count from there.
  const int first = window > 0 ? max(0, ctx - window) : 0;
  const int start = first + part * partition_size;
  const int end = min(ctx, start + partition_size);
  const int64_t row = (int64_t)num_kv_heads * HD;  // elements per slot

  float qv[DPL];
  const T* qp = q + ((int64_t)seq * num_heads + head) * HD + lane * DPL;
#pragma unroll
  for (int i = 0; i < DPL; ++i) qv[i] = to_f32(qp[i]) * scale;

  float m = -FLT_MAX, l = 0.f, acc[DPL];
#pragma unroll
  for (int i = 0; i < DPL; ++i) acc[i] = 0.f;

  const int32_t* table = block_tables + (int64_t)seq * max_blocks_per_seq;
  for (int t = start + warp; t < end; t += NUM_WARPS) {
    const int64_t slot = (int64_t)table[t / block_size] * block_size + (t % block_size);
    const T* kp = k_cache + slot * row + (int64_t)kv_head * HD + lane * DPL;
    const T* vp = v_cache + slot * row + (int64_t)kv_head * HD + lane * DPL;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) dot += qv[i] * to_f32(kp[i]);
    dot = warp_sum(dot);
    const float m_new = fmaxf(m, dot);
    const float corr = __expf(m - m_new);
    const float p = __expf(dot - m_new);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[i] = acc[i] * corr + p * to_f32(vp[i]);
    m = m_new;
  }

  // Merge the warps.
  __shared__ float s_m[NUM_WARPS], s_l[NUM_WARPS];
  __shared__ float s_acc[NUM_WARPS][MAX_HEAD_DIM];
  if (lane == 0) { s_m[warp] = m; s_l[warp] = l; }
#pragma unroll
  for (int i = 0; i < DPL; ++i) s_acc[warp][lane * DPL + i] = acc[i];
  __syncthreads();
  float gm = -FLT_MAX;
#pragma unroll
  for (int w = 0; w < NUM_WARPS; ++w) gm = fmaxf(gm, s_m[w]);
  float gl = 0.f;
#pragma unroll
  for (int w = 0; w < NUM_WARPS; ++w) gl += s_l[w] * (s_l[w] > 0.f ? __expf(s_m[w] - gm) : 0.f);
  const float inv = gl > 0.f ? 1.f / gl : 0.f;
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < NUM_WARPS; ++w)
      o += s_acc[w][d] * (s_l[w] > 0.f ? __expf(s_m[w] - gm) : 0.f);
    o *= inv;
    if (num_parts == 1) {
      out[((int64_t)seq * num_heads + head) * HD + d] = from_f32<T>(o);
    } else {
      part_out[(((int64_t)seq * num_heads + head) * num_parts + part) * HD + d] = o;
    }
  }
  if (num_parts > 1 && threadIdx.x == 0) {
    const int64_t i = ((int64_t)seq * num_heads + head) * num_parts + part;
    part_max[i] = gl > 0.f ? gm : -FLT_MAX;
    part_sum[i] = gl;
  }
}

// Combines split-K partitions: out = sum_p o_p * l_p * exp(m_p - M) / sum_p l_p * exp(m_p - M).
template <typename T>
__device__ void paged_attention_reduce(T* __restrict__ out, const float* __restrict__ part_out,
                                       const float* __restrict__ part_max,
                                       const float* __restrict__ part_sum, int num_heads,
                                       int head_dim, int num_parts) {
  const int head = blockIdx.x, seq = blockIdx.y;
  const int64_t base = ((int64_t)seq * num_heads + head) * num_parts;
  float gm = -FLT_MAX;
  for (int p = 0; p < num_parts; ++p) gm = fmaxf(gm, part_max[base + p]);
  float denom = 0.f;
  for (int p = 0; p < num_parts; ++p)
    denom += part_sum[base + p] > 0.f ? part_sum[base + p] * __expf(part_max[base + p] - gm) : 0.f;
  const float inv = denom > 0.f ? 1.f / denom : 0.f;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.f;
    for (int p = 0; p < num_parts; ++p) {
      const float w = part_sum[base + p] > 0.f ? part_sum[base + p] * __expf(part_max[base + p] - gm) : 0.f;
      o += part_out[(base + p) * head_dim + d] * w;
    }
    out[((int64_t)seq * num_heads + head) * head_dim + d] = from_f32<T>(o * inv);
  }
}

#define PAGED_ATTENTION(NAME, T, DPL)                                                          \
  extern "C" __global__ void __launch_bounds__(NUM_WARPS * 32)                                 \
      NAME(T* out, float* part_out, float* part_max, float* part_sum, const T* q,              \
           const T* k_cache, const T* v_cache, const int32_t* block_tables,                    \
           const int32_t* context_lens, int max_blocks_per_seq, int num_heads,                 \
           int num_kv_heads, int block_size, float scale, int partition_size, int window) {    \
    paged_attention<T, DPL>(out, part_out, part_max, part_sum, q, k_cache, v_cache,            \
                            block_tables, context_lens, max_blocks_per_seq, num_heads,         \
                            num_kv_heads, block_size, scale, partition_size, window);          \
  }

#define FOR_DIMS(T, SUFFIX)                               \
  PAGED_ATTENTION(paged_attention_d32_##SUFFIX, T, 1)     \
  PAGED_ATTENTION(paged_attention_d64_##SUFFIX, T, 2)     \
  PAGED_ATTENTION(paged_attention_d128_##SUFFIX, T, 4)    \
  PAGED_ATTENTION(paged_attention_d256_##SUFFIX, T, 8)    \
  extern "C" __global__ void paged_attention_reduce_##SUFFIX(                                  \
      T* out, const float* part_out, const float* part_max, const float* part_sum,             \
      int num_heads, int head_dim, int num_parts) {                                            \
    paged_attention_reduce<T>(out, part_out, part_max, part_sum, num_heads, head_dim,          \
                              num_parts);                                                      \
  }

FOR_DIMS(float, f32)
FOR_DIMS(__half, f16)
FOR_DIMS(__nv_bfloat16, bf16)
