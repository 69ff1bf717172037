// Varlen causal attention over the paged KV cache, for prefill chunks and mixed batches
// (any number of new tokens per sequence; their K/V are already in the cache).
//
// Grid (num_tiles, num_heads), 128 threads = 4 warps. A tile is up to 16 consecutive query
// rows of one sequence (the host plans tiles: [seq, first row, rows]). The CTA stages its
// queries in shared memory, then walks the sequence's keys in chunks of 32: each chunk's K
// and V are read once through the block table into shared memory (K rows padded by one
// float so lane j's reads of key j hit distinct banks) and reused by all 16 rows. Warp w
// owns rows w, w+4, w+8, w+12; lane j scores key j of the chunk, the warp keeps an online
// softmax per row, and lane l accumulates output dims l, l+32, ... Query at position p sees
// keys 0..=p (position = context_len - query_len + index in the sequence's new tokens); with
// a sliding window (window > 0) only keys p - window + 1 ..= p, and the walk starts at the
// first key the tile's first row sees.
#include "common.cuh"
#include <float.h>

#define PF_WARPS 4
#define PF_BQ 16
#define PF_BK 32
#define PF_ROWS_PER_WARP (PF_BQ / PF_WARPS)

template <typename T, int HD>
__device__ void prefill_attention(T* __restrict__ out, const T* __restrict__ q,
                                  const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                                  const int32_t* __restrict__ block_tables,
                                  const int32_t* __restrict__ context_lens,
                                  const int32_t* __restrict__ query_start_loc,
                                  const int32_t* __restrict__ tiles, int max_blocks_per_seq,
                                  int num_heads, int num_kv_heads, int block_size, float scale,
                                  int window) {
  constexpr int DPL = HD / 32;
  extern __shared__ float smem[];
  float* sq = smem;                   // [BQ][HD]
  float* sk = sq + PF_BQ * HD;        // [BK][HD + 1]
  float* sv = sk + PF_BK * (HD + 1);  // [BK][HD]
  const int tile = blockIdx.x, head = blockIdx.y;
  const int seq = tiles[tile * 3], row0 = tiles[tile * 3 + 1], nrows = tiles[tile * 3 + 2];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kv_head = head / (num_heads / num_kv_heads);
  const int q_first = query_start_loc[seq];
  const int qlen = query_start_loc[seq + 1] - q_first;
  const int pos0 = context_lens[seq] - qlen + (row0 - q_first);
  const int last_key = pos0 + nrows - 1;
  const int64_t row_stride = (int64_t)num_heads * HD;
  const int64_t slot_stride = (int64_t)num_kv_heads * HD;
  const int32_t* table = block_tables + (int64_t)seq * max_blocks_per_seq;

  for (int e = threadIdx.x; e < PF_BQ * HD; e += blockDim.x) {
    const int r = e / HD, d = e % HD;
    sq[e] = r < nrows ? to_f32(q[(int64_t)(row0 + r) * row_stride + (int64_t)head * HD + d]) * scale
                      : 0.f;
  }
  float m[PF_ROWS_PER_WARP], l[PF_ROWS_PER_WARP], acc[PF_ROWS_PER_WARP][DPL];
#pragma unroll
  for (int i = 0; i < PF_ROWS_PER_WARP; ++i) {
    m[i] = -FLT_MAX;
    l[i] = 0.f;
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd) acc[i][dd] = 0.f;
  }

  const int first_key = window > 0 ? max(0, pos0 - window + 1) : 0;
  for (int kb = first_key; kb <= last_key; kb += PF_BK) {
    __syncthreads();  // the previous chunk is consumed (and the queries are staged)
    for (int e = threadIdx.x; e < PF_BK * HD; e += blockDim.x) {
      const int j = e / HD, d = e % HD, t = kb + j;
      float kk = 0.f, vv = 0.f;
      if (t <= last_key) {
        const int64_t slot = (int64_t)table[t / block_size] * block_size + t % block_size;
        const int64_t off = slot * slot_stride + (int64_t)kv_head * HD + d;
        kk = to_f32(k_cache[off]);
        vv = to_f32(v_cache[off]);
      }
      sk[j * (HD + 1) + d] = kk;
      sv[j * HD + d] = vv;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < PF_ROWS_PER_WARP; ++i) {
      const int r = warp + i * PF_WARPS;
      if (r >= nrows) continue;  // warp-uniform
      const int pos = pos0 + r;
      if (kb > pos) continue;    // warp-uniform: no key of this chunk is visible
      const int t = kb + lane;
      const bool visible = t <= pos && (window <= 0 || t > pos - window);
      float s = -FLT_MAX;
      if (visible) {
        const float* qr = sq + r * HD;
        const float* kr = sk + lane * (HD + 1);
        float dot = 0.f;
#pragma unroll 16
        for (int d = 0; d < HD; ++d) dot += qr[d] * kr[d];
        s = dot;
      }
      const float m_new = fmaxf(m[i], warp_max(s));
      const float corr = __expf(m[i] - m_new);
      const float p = visible ? __expf(s - m_new) : 0.f;
      l[i] = l[i] * corr + warp_sum(p);
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd) acc[i][dd] *= corr;
      const int nvis = min(PF_BK, pos - kb + 1);
      for (int j = 0; j < nvis; ++j) {
        const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
        for (int dd = 0; dd < DPL; ++dd) acc[i][dd] += pj * sv[j * HD + lane + 32 * dd];
      }
      m[i] = m_new;
    }
  }
#pragma unroll
  for (int i = 0; i < PF_ROWS_PER_WARP; ++i) {
    const int r = warp + i * PF_WARPS;
    if (r >= nrows) continue;
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
    T* o = out + (int64_t)(row0 + r) * row_stride + (int64_t)head * HD;
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd) o[lane + 32 * dd] = from_f32<T>(acc[i][dd] * inv);
  }
}

#define PREFILL(NAME, T, HD)                                                                   \
  extern "C" __global__ void __launch_bounds__(PF_WARPS * 32)                                  \
      NAME(T* out, const T* q, const T* k_cache, const T* v_cache, const int32_t* block_tables, \
           const int32_t* context_lens, const int32_t* query_start_loc, const int32_t* tiles,   \
           int max_blocks_per_seq, int num_heads, int num_kv_heads, int block_size,            \
           float scale, int window) {                                                          \
    prefill_attention<T, HD>(out, q, k_cache, v_cache, block_tables, context_lens,             \
                             query_start_loc, tiles, max_blocks_per_seq, num_heads,            \
                             num_kv_heads, block_size, scale, window);                         \
  }

#define PREFILL_DIMS(T, SUFFIX)                      \
  PREFILL(prefill_attention_d32_##SUFFIX, T, 32)     \
  PREFILL(prefill_attention_d64_##SUFFIX, T, 64)     \
  PREFILL(prefill_attention_d128_##SUFFIX, T, 128)   \
  PREFILL(prefill_attention_d256_##SUFFIX, T, 256)

PREFILL_DIMS(float, f32)
PREFILL_DIMS(__half, f16)
PREFILL_DIMS(__nv_bfloat16, bf16)
