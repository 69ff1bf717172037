// Skinny matmul for decode: y[m, n] = sum_k x[m, k] * w[n, k] for M <= 4 rows of x, w
// row-major [N, K] (a linear layer's weight as stored). At batch 1-4 a decode step is a
// weight read: each warp streams one weight row with 16-byte loads, four in flight per
// lane, against every row of x, and reduces across the warp; f32 accumulation, one
// rounding to T. Needs K % (16 / sizeof(T)) == 0 and 16-byte aligned rows (the caller
// checks, else cuBLAS). Grid (ceil(N / 8)), 256 threads: one output column n per warp.
#include "common.cuh"

template <typename T>
struct Vec16 {
  static constexpr int N = 16 / sizeof(T);
};

template <typename T>
__device__ __forceinline__ void unpack(const uint4& u, float* f) {
  const T* p = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < Vec16<T>::N; ++i) f[i] = to_f32(p[i]);
}

template <typename T, int M>
__device__ void gemv(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                     int n_out, int k) {
  constexpr int V = Vec16<T>::N;
  constexpr int UNROLL = 4;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = blockIdx.x * (blockDim.x / 32) + warp;
  if (n >= n_out) return;
  const uint4* wr = reinterpret_cast<const uint4*>(w + (int64_t)n * k);
  const int kv = k / V;  // 16-byte chunks per row
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  int c = lane;
  for (; c + 32 * (UNROLL - 1) < kv; c += 32 * UNROLL) {
    uint4 wu[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) wu[u] = __ldg(wr + c + 32 * u);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      float wf[V];
      unpack<T>(wu[u], wf);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[V];
        unpack<T>(__ldg(reinterpret_cast<const uint4*>(x + (int64_t)m * k) + c + 32 * u), xf);
#pragma unroll
        for (int i = 0; i < V; ++i) acc[m] += wf[i] * xf[i];
      }
    }
  }
  for (; c < kv; c += 32) {
    float wf[V];
    unpack<T>(__ldg(wr + c), wf);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float xf[V];
      unpack<T>(__ldg(reinterpret_cast<const uint4*>(x + (int64_t)m * k) + c), xf);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[m] += wf[i] * xf[i];
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float s = warp_sum(acc[m]);
    if (lane == 0) y[(int64_t)m * n_out + n] = from_f32<T>(s);
  }
}

#define GEMV(T, SUFFIX, M)                                                                 \
  extern "C" __global__ void __launch_bounds__(256)                                        \
      gemv_m##M##_##SUFFIX(const T* x, const T* w, T* y, int n_out, int k) {               \
    gemv<T, M>(x, w, y, n_out, k);                                                         \
  }
#define GEMV_ALL(T, SUFFIX) GEMV(T, SUFFIX, 1) GEMV(T, SUFFIX, 2) GEMV(T, SUFFIX, 3) GEMV(T, SUFFIX, 4)

GEMV_ALL(float, f32)
GEMV_ALL(__half, f16)
GEMV_ALL(__nv_bfloat16, bf16)
