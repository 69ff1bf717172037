// Decode attention, one CTA per (KV head, sequence, partition) serving all G query heads
// that share the KV head (GQA), so each K/V row is read from memory once, not G times.
//
// 128 threads = 4 warps, each split into two 16-lane sub-warps: 8 "virtual warps" walk the
// partition's keys U at a time (keys t0 .. t0+U-1, t0 stepping by 8 * U; both halves of a
// warp take the same number of turns, since their shuffles name the whole warp). Lane l of a
// sub-warp holds dims [l*DPL, (l+1)*DPL) of each query head and of its running outputs and
// loads its slice of each key/value row with one or two 16-byte loads, so a sub-warp has
// GQ_U rows of K (then V) in flight before it needs the first. Dot products are reduced over
// the 16 lanes (4 shuffles); each virtual warp keeps an online softmax per query head; they
// are merged through shared memory at the end. Output layout and split-K partials are those
// of paged_attention_* (the same reduce kernel combines partitions).
#include "common.cuh"
#include <float.h>

#define GQ_WARPS 4
#define GQ_LPK 16
#define GQ_NVW (GQ_WARPS * (32 / GQ_LPK))

template <typename T, int N>
__device__ __forceinline__ void load_row(const T* __restrict__ p, float* out) {
  constexpr int BYTES = N * sizeof(T);
  if constexpr (BYTES % 16 == 0) {
#pragma unroll
    for (int c = 0; c < BYTES / 16; ++c) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[c];
      const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
      for (int i = 0; i < 16 / (int)sizeof(T); ++i) out[c * (16 / sizeof(T)) + i] = to_f32(e[i]);
    }
  } else if constexpr (BYTES == 8) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_f32(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_f32(p[i]);
  }
}

template <typename T, int HD, int G>
__device__ void paged_attention_gqa(T* __restrict__ out, float* __restrict__ part_out,
                                    float* __restrict__ part_max, float* __restrict__ part_sum,
                                    const T* __restrict__ q, const T* __restrict__ k_cache,
                                    const T* __restrict__ v_cache,
                                    const int32_t* __restrict__ block_tables,
                                    const int32_t* __restrict__ context_lens,
                                    int max_blocks_per_seq, int num_heads, int num_kv_heads,
                                    int block_size, float scale, int partition_size, int window) {
  constexpr int DPL = HD / GQ_LPK;
  constexpr int U = G <= 4 ? 4 : 2;
  const int kvh = blockIdx.x, seq = blockIdx.y, part = blockIdx.z;
  const int num_parts = gridDim.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sl = lane % GQ_LPK;
  const int vw = warp * (32 / GQ_LPK) + lane / GQ_LPK;
  const int ctx = context_lens[seq];
  const int first = window > 0 ? max(0, ctx - window) : 0;  // sliding window
  const int start = first + part * partition_size;
  const int end = min(ctx, start + partition_size);
  const int64_t row = (int64_t)num_kv_heads * HD;

  float qv[G][DPL];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    load_row<T, DPL>(q + ((int64_t)seq * num_heads + kvh * G + g) * HD + sl * DPL, qv[g]);
#pragma unroll
    for (int i = 0; i < DPL; ++i) qv[g][i] *= scale;
  }
  float m[G], l[G], acc[G][DPL];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -FLT_MAX;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[g][i] = 0.f;
  }
  const int32_t* table = block_tables + (int64_t)seq * max_blocks_per_seq;
  // The loop bound is the same for both sub-warps of a warp (the 16-lane shuffles below
  // name the whole warp): each warp takes 2*U keys per turn, the second sub-warp's U may
  // lie past the end and are masked.
  const int sub = lane / GQ_LPK;
  for (int tb = start + warp * (32 / GQ_LPK) * U; tb < end; tb += GQ_NVW * U) {
    const int t0 = tb + sub * U;
    int64_t off[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = min(t0 + u, end - 1);  // clamped: a valid row, masked below
      off[u] = ((int64_t)table[t / block_size] * block_size + t % block_size) * row +
               (int64_t)kvh * HD + sl * DPL;
    }
    float kf[U][DPL];
#pragma unroll
    for (int u = 0; u < U; ++u) load_row<T, DPL>(k_cache + off[u], kf[u]);
    float vf[U][DPL];
#pragma unroll
    for (int u = 0; u < U; ++u) load_row<T, DPL>(v_cache + off[u], vf[u]);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float s[U];
      float mx = -FLT_MAX;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) d += qv[g][i] * kf[u][i];
#pragma unroll
        for (int o = GQ_LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        s[u] = t0 + u < end ? d : -FLT_MAX;
        mx = fmaxf(mx, s[u]);
      }
      const float m_new = fmaxf(m[g], mx);
      const float corr = __expf(m[g] - m_new);
      l[g] *= corr;
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[g][i] *= corr;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float p = t0 + u < end ? __expf(s[u] - m_new) : 0.f;
        l[g] += p;
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[g][i] += p * vf[u][i];
      }
      m[g] = m_new;
    }
  }

  __shared__ float s_m[GQ_NVW][G], s_l[GQ_NVW][G];
  __shared__ float s_acc[GQ_NVW][G][HD];
  if (sl == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      s_m[vw][g] = m[g];
      s_l[vw][g] = l[g];
    }
  }
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int i = 0; i < DPL; ++i) s_acc[vw][g][sl * DPL + i] = acc[g][i];
  __syncthreads();
  for (int e = threadIdx.x; e < G * HD; e += blockDim.x) {
    const int g = e / HD, d = e % HD;
    float gm = -FLT_MAX;
#pragma unroll
    for (int w = 0; w < GQ_NVW; ++w) gm = fmaxf(gm, s_m[w][g]);
    float gl = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < GQ_NVW; ++w) {
      const float f = s_l[w][g] > 0.f ? __expf(s_m[w][g] - gm) : 0.f;
      gl += s_l[w][g] * f;
      o += s_acc[w][g][d] * f;
    }
    o *= gl > 0.f ? 1.f / gl : 0.f;
    const int head = kvh * G + g;
    if (num_parts == 1) {
      out[((int64_t)seq * num_heads + head) * HD + d] = from_f32<T>(o);
    } else {
      part_out[(((int64_t)seq * num_heads + head) * num_parts + part) * HD + d] = o;
      if (d == 0) {
        const int64_t i = ((int64_t)seq * num_heads + head) * num_parts + part;
        part_max[i] = gl > 0.f ? gm : -FLT_MAX;
        part_sum[i] = gl;
      }
    }
  }
}

#define GQA(T, SUFFIX, HD, G)                                                                  \
  extern "C" __global__ void __launch_bounds__(GQ_WARPS * 32)                                  \
      paged_attention_gqa_d##HD##_g##G##_##SUFFIX(                                             \
          T* out, float* part_out, float* part_max, float* part_sum, const T* q,               \
          const T* k_cache, const T* v_cache, const int32_t* block_tables,                     \
          const int32_t* context_lens, int max_blocks_per_seq, int num_heads,                  \
          int num_kv_heads, int block_size, float scale, int partition_size, int window) {     \
    paged_attention_gqa<T, HD, G>(out, part_out, part_max, part_sum, q, k_cache, v_cache,      \
                                  block_tables, context_lens, max_blocks_per_seq, num_heads,   \
                                  num_kv_heads, block_size, scale, partition_size, window);    \
  }

#define GQA_GROUPS(T, SUFFIX, HD) \
  GQA(T, SUFFIX, HD, 1) GQA(T, SUFFIX, HD, 2) GQA(T, SUFFIX, HD, 3) GQA(T, SUFFIX, HD, 4) \
  GQA(T, SUFFIX, HD, 6) GQA(T, SUFFIX, HD, 8)

#define GQA_TYPE(T, SUFFIX) \
  GQA_GROUPS(T, SUFFIX, 32) GQA_GROUPS(T, SUFFIX, 64) GQA_GROUPS(T, SUFFIX, 128)

GQA_TYPE(float, f32)
GQA_TYPE(__half, f16)
GQA_TYPE(__nv_bfloat16, bf16)
