// Fused elementwise kernels of the Llama block, f32 accumulation, one rounding to T.
//
// silu_mul:     out[i] = silu(gate[i]) * up[i]                       (grid-stride)
// add_rms_norm: out[0] = x + residual; out[1] = rms_norm(out[0]) * w  (one CTA per row)
//   out is [2, rows, h]: the new residual stream and the normalised input of the next
//   sub-layer, in one pass over the row.
#include "common.cuh"

// Sum of v over the block (blockDim.x <= 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float red[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int nwarps = (blockDim.x + 31) / 32;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < nwarps ? red[lane] : 0.f;
    t = warp_sum(t);
    if (lane == 0) red[0] = t;
  }
  __syncthreads();
  const float total = red[0];
  __syncthreads();  // everyone has read red[0] before a later call may overwrite it
  return total;
}


template <typename T>
__device__ void silu_mul(const T* __restrict__ gate, const T* __restrict__ up,
                         T* __restrict__ out, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float g = to_f32(gate[i]);
    out[i] = from_f32<T>(g / (1.f + __expf(-g)) * to_f32(up[i]));
  }
}

// delta, w in T; the residual stream and both outputs in R (T, or f32 for a half-precision
// model's f32 residual). out is R [2, rows, h]: the new residual, then its RMSNorm times w.
template <typename T, typename R>
__device__ void add_rms_norm(const T* __restrict__ delta, const R* __restrict__ residual,
                             const T* __restrict__ w, R* __restrict__ out, int rows, int h,
                             float eps) {
  const int row = blockIdx.x;
  const T* dr = delta + (int64_t)row * h;
  const R* rr = residual + (int64_t)row * h;
  R* sum_out = out + (int64_t)row * h;
  R* norm_out = out + (int64_t)rows * h + (int64_t)row * h;
  float ss = 0.f;
  for (int i = threadIdx.x; i < h; i += blockDim.x) {
    const R s = from_f32<R>(to_f32(dr[i]) + to_f32(rr[i]));
    sum_out[i] = s;
    const float f = to_f32(s);
    ss += f * f;
  }
  const float inv = rsqrtf(block_sum(ss) / (float)h + eps);
  for (int i = threadIdx.x; i < h; i += blockDim.x)
    norm_out[i] = from_f32<R>(to_f32(sum_out[i]) * inv * to_f32(w[i]));
}

#define FUSED(T, SUFFIX)                                                                     \
  extern "C" __global__ void silu_mul_##SUFFIX(const T* gate, const T* up, T* out,          \
                                               int64_t n) {                                  \
    silu_mul<T>(gate, up, out, n);                                                           \
  }                                                                                          \
  extern "C" __global__ void add_rms_norm_##SUFFIX(const T* x, const T* residual, const T* w, \
                                                   T* out, int rows, int h, float eps) {     \
    add_rms_norm<T, T>(x, residual, w, out, rows, h, eps);                                    \
  }

FUSED(float, f32)
FUSED(__half, f16)
FUSED(__nv_bfloat16, bf16)

#define FUSED_F32RES(T, SUFFIX)                                                                 \
  extern "C" __global__ void add_rms_norm_f32res_##SUFFIX(const T* delta, const float* residual, \
                                                          const T* w, float* out, int rows,     \
                                                          int h, float eps) {                   \
    add_rms_norm<T, float>(delta, residual, w, out, rows, h, eps);                                \
  }

FUSED_F32RES(__half, f16)
FUSED_F32RES(__nv_bfloat16, bf16)

// rope_split_qkv: a stacked QKV projection's output [n, (nh + 2 nkv) * hd] split into
// q [n, nh * hd], k [n, nkv * hd], v [n, nkv * hd] written back to back in out, with q and
// k rotated (neox: pairs (i, i + hd/2); else interleaved pairs (2i, 2i + 1)) by cos/sin
// [n, hd/2]. Grid (n, nh + 2 nkv), one head of one token per CTA.
template <typename T>
__device__ void rope_split_qkv(const T* __restrict__ qkv, const T* __restrict__ cos,
                               const T* __restrict__ sin, T* __restrict__ out, int n, int nh,
                               int nkv, int hd, int neox) {
  const int tok = blockIdx.x, head = blockIdx.y;
  const int half = hd / 2;
  const T* src = qkv + (int64_t)tok * (nh + 2 * nkv) * hd + (int64_t)head * hd;
  T* dst;
  if (head < nh) {
    dst = out + ((int64_t)tok * nh + head) * hd;
  } else if (head < nh + nkv) {
    dst = out + (int64_t)n * nh * hd + ((int64_t)tok * nkv + (head - nh)) * hd;
  } else {
    dst = out + (int64_t)n * (nh + nkv) * hd + ((int64_t)tok * nkv + (head - nh - nkv)) * hd;
  }
  const bool rotate = head < nh + nkv;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const int i1 = neox ? i : 2 * i, i2 = neox ? i + half : 2 * i + 1;
    if (rotate) {
      const float a = to_f32(src[i1]), b = to_f32(src[i2]);
      const float c = to_f32(cos[(int64_t)tok * half + i]), s = to_f32(sin[(int64_t)tok * half + i]);
      dst[i1] = from_f32<T>(a * c - b * s);
      dst[i2] = from_f32<T>(a * s + b * c);
    } else {
      dst[i1] = src[i1];
      dst[i2] = src[i2];
    }
  }
}

// silu_mul_packed: a stacked gate/up projection's output [rows, 2 ff] (gate, then up) to
// silu(gate) * up [rows, ff].
template <typename T>
__device__ void silu_mul_packed(const T* __restrict__ gu, T* __restrict__ out, int64_t rows,
                                int64_t ff) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < rows * ff;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / ff, j = i % ff;
    const float g = to_f32(gu[r * 2 * ff + j]);
    out[i] = from_f32<T>(g / (1.f + __expf(-g)) * to_f32(gu[r * 2 * ff + ff + j]));
  }
}

#define STACKED(T, SUFFIX)                                                                     \
  extern "C" __global__ void rope_split_qkv_##SUFFIX(const T* qkv, const T* cos, const T* sin, \
                                                     T* out, int n, int nh, int nkv, int hd,   \
                                                     int neox) {                               \
    rope_split_qkv<T>(qkv, cos, sin, out, n, nh, nkv, hd, neox);                               \
  }                                                                                            \
  extern "C" __global__ void silu_mul_packed_##SUFFIX(const T* gu, T* out, int64_t rows,       \
                                                      int64_t ff) {                            \
    silu_mul_packed<T>(gu, out, rows, ff);                                                     \
  }

STACKED(float, f32)
STACKED(__half, f16)
STACKED(__nv_bfloat16, bf16)
