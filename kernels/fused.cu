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
