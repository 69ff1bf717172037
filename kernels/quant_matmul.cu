// GGUF-quantized linear layers: y[m, n] = sum_k x[m, k] * w[n, k], the weight kept in its
// GGUF blocks (row-major [n, k / values-per-block] blocks).
//
// Decode (1-8 rows, qmv_*): the activation rows are first quantized to 8 bits in blocks of
// 32 (quantize_q8_1_*: int8 values, and per block its scale d and d * sum(q), as
// llama.cpp's MMVQ does), then one warp per output column walks the weight row 32 values
// (a "chunk") per lane at a time: the chunk's quants are unpacked in registers into eight
// int8x4 words, multiplied with the activation's by dp4a, and scaled in f32. Every type
// reduces to one form per chunk:
//   fa * da * sum(w[0..16] * a[0..16]) + fb * da * sum(w[16..32] * a[16..32]) + fm * sa
// (da, sa: the activation block's scale and d * sum(q)); fa, fb, fm are the type's:
//   Q4_0 d, d, -8d · Q4_1 d, d, m · Q5_0 d, d, -16d · Q5_1 d, d, m · Q8_0 d, d, 0 ·
//   Q4_K/Q5_K d*sc, d*sc, -dmin*min · Q6_K d*sc_lo, d*sc_hi, 0 (quants stored offset by 32).
// Each weight byte is read once; the activation (8 bits a value) is read from L1/L2.
//
// Prefill (dequantize_*): the weight dequantized to the activation type, for a cuBLAS matmul.
// The CPU mirror of the unpacking (quant/device/chunks.rs) is tested against the CPU
// dequantizer on every type.
#include "common.cuh"

enum QType { Q4_0 = 0, Q4_1 = 1, Q5_0 = 2, Q5_1 = 3, Q8_0 = 4, Q4_K = 5, Q5_K = 6, Q6_K = 7 };

template <int TY> struct QTraits;
template <> struct QTraits<Q4_0> { static constexpr int BYTES = 18, VALS = 32; };
template <> struct QTraits<Q4_1> { static constexpr int BYTES = 20, VALS = 32; };
template <> struct QTraits<Q5_0> { static constexpr int BYTES = 22, VALS = 32; };
template <> struct QTraits<Q5_1> { static constexpr int BYTES = 24, VALS = 32; };
template <> struct QTraits<Q8_0> { static constexpr int BYTES = 34, VALS = 32; };
template <> struct QTraits<Q4_K> { static constexpr int BYTES = 144, VALS = 256; };
template <> struct QTraits<Q5_K> { static constexpr int BYTES = 176, VALS = 256; };
template <> struct QTraits<Q6_K> { static constexpr int BYTES = 210, VALS = 256; };

// Blocks of 18, 22, 34 and 210 bytes are only 2-byte aligned: words are read as two halves.
__device__ __forceinline__ int ld32_a2(const uint8_t* p) {
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return (int)((uint32_t)__ldg(h) | ((uint32_t)__ldg(h + 1) << 16));
}
__device__ __forceinline__ int ld32_a4(const uint8_t* p) {
  return __ldg(reinterpret_cast<const int*>(p));
}
__device__ __forceinline__ float ld_f16(const uint8_t* p) {
  return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}
// Bits 0-3 of b to bit 4 of bytes 0-3 (a fifth bit of four 4-bit quants).
__device__ __forceinline__ int spread4(int b) {
  return ((b & 1) << 4) | ((b & 2) << 11) | ((b & 4) << 18) | ((b & 8) << 25);
}

// One 32-value chunk of a weight row: eight int8x4 words (values 4i..4i+3 in word i) and
// the factors of the form above.
struct Chunk {
  int w[8];
  float fa, fb, fm;
};

template <int TY>
__device__ __forceinline__ Chunk unpack(const uint8_t* __restrict__ row, int c) {
  Chunk ch;
  if constexpr (TY == Q4_0 || TY == Q4_1 || TY == Q5_0 || TY == Q5_1) {
    constexpr int QS = TY == Q4_0 ? 2 : TY == Q4_1 ? 4 : TY == Q5_0 ? 6 : 8;
    const uint8_t* b = row + (int64_t)c * QTraits<TY>::BYTES;
    const float d = ld_f16(b);
    int qh = 0;
    if constexpr (TY == Q5_0) qh = ld32_a2(b + 2);
    if constexpr (TY == Q5_1) qh = ld32_a4(b + 4);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int u = (TY == Q4_1 || TY == Q5_1) ? ld32_a4(b + QS + 4 * i) : ld32_a2(b + QS + 4 * i);
      ch.w[i] = u & 0x0F0F0F0F;
      ch.w[4 + i] = (u >> 4) & 0x0F0F0F0F;
      if constexpr (TY == Q5_0 || TY == Q5_1) {
        ch.w[i] |= spread4(qh >> (4 * i));
        ch.w[4 + i] |= spread4(qh >> (16 + 4 * i));
      }
    }
    ch.fa = ch.fb = d;
    if constexpr (TY == Q4_0) ch.fm = -8.f * d;
    if constexpr (TY == Q5_0) ch.fm = -16.f * d;
    if constexpr (TY == Q4_1 || TY == Q5_1) ch.fm = ld_f16(b + 2);
  } else if constexpr (TY == Q8_0) {
    const uint8_t* b = row + (int64_t)c * 34;
    const float d = ld_f16(b);
#pragma unroll
    for (int i = 0; i < 8; ++i) ch.w[i] = ld32_a2(b + 2 + 4 * i);
    ch.fa = ch.fb = d;
    ch.fm = 0.f;
  } else if constexpr (TY == Q4_K || TY == Q5_K) {
    const uint8_t* b = row + (int64_t)(c >> 3) * QTraits<TY>::BYTES;
    const int j = c & 7;
    const float d = ld_f16(b), dmin = ld_f16(b + 2);
    const uint8_t* s = b + 4;
    int sc, mn;
    if (j < 4) {
      sc = __ldg(s + j) & 63;
      mn = __ldg(s + j + 4) & 63;
    } else {
      sc = (__ldg(s + j + 4) & 0xF) | ((__ldg(s + j - 4) >> 6) << 4);
      mn = (__ldg(s + j + 4) >> 4) | ((__ldg(s + j) >> 6) << 4);
    }
    constexpr int QS = TY == Q4_K ? 16 : 48;
    const uint8_t* qs = b + QS + 32 * (j >> 1);
    const int shift = 4 * (j & 1);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      ch.w[i] = (ld32_a4(qs + 4 * i) >> shift) & 0x0F0F0F0F;
      if constexpr (TY == Q5_K) ch.w[i] |= ((ld32_a4(b + 16 + 4 * i) >> j) & 0x01010101) << 4;
    }
    ch.fa = ch.fb = d * (float)sc;
    ch.fm = -dmin * (float)mn;
  } else {  // Q6_K
    const uint8_t* b = row + (int64_t)(c >> 3) * 210;
    const int j = c & 7, half = j >> 2, t = j & 3;
    const uint8_t* ql = b + 64 * half + 32 * (t & 1);
    const uint8_t* qh = b + 128 + 32 * half;
    const int lshift = 4 * (t >> 1), hshift = 2 * t;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int lo = (ld32_a2(ql + 4 * i) >> lshift) & 0x0F0F0F0F;
      const int hi = ((ld32_a2(qh + 4 * i) >> hshift) & 0x03030303) << 4;
      ch.w[i] = __vsubss4(lo | hi, 0x20202020);
    }
    const float d = ld_f16(b + 208);
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192 + 8 * half + 2 * t);
    ch.fa = d * (float)__ldg(sc);
    ch.fb = d * (float)__ldg(sc + 1);
    ch.fm = 0.f;
  }
  return ch;
}

// Activation rows to 8 bits: grid (ceil(k / 32 / 8), m), 256 threads, a warp a block of 32.
template <typename T>
__device__ void quantize_q8_1(const T* __restrict__ x, int8_t* __restrict__ q,
                              float2* __restrict__ ds, int k) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int nb = k / 32, b = blockIdx.x * 8 + warp, row = blockIdx.y;
  if (b >= nb) return;
  const int64_t i = (int64_t)row * k + b * 32 + lane;
  const float v = to_f32(x[i]);
  const float amax = warp_max(fabsf(v));
  const float d = amax / 127.f;
  const int qi = amax == 0.f ? 0 : __float2int_rn(v / d);
  q[i] = (int8_t)qi;
  const float sum = warp_sum((float)qi);  // an exact integer (|sum| <= 4064)
  if (lane == 0) ds[(int64_t)row * nb + b] = make_float2(d, d * sum);
}

// Decode: grid (ceil(n / 4)), 128 threads; warp w of CTA b owns output column 4b + w.
template <typename T, int TY, int M>
__device__ void qmv(const uint8_t* __restrict__ w, const int8_t* __restrict__ xq,
                    const float2* __restrict__ xds, T* __restrict__ y, int n_out, int k) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = blockIdx.x * (blockDim.x / 32) + warp;
  if (n >= n_out) return;
  const int chunks = k / 32;
  const uint8_t* row = w + (int64_t)n * (k / QTraits<TY>::VALS) * QTraits<TY>::BYTES;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
#pragma unroll 2
  for (int c = lane; c < chunks; c += 32) {
    const Chunk ch = unpack<TY>(row, c);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int4* a = reinterpret_cast<const int4*>(xq + (int64_t)m * k + 32 * c);
      const int4 a0 = a[0], a1 = a[1];
      int lo = __dp4a(ch.w[0], a0.x, 0);
      lo = __dp4a(ch.w[1], a0.y, lo);
      lo = __dp4a(ch.w[2], a0.z, lo);
      lo = __dp4a(ch.w[3], a0.w, lo);
      int hi = __dp4a(ch.w[4], a1.x, 0);
      hi = __dp4a(ch.w[5], a1.y, hi);
      hi = __dp4a(ch.w[6], a1.z, hi);
      hi = __dp4a(ch.w[7], a1.w, hi);
      const float2 ds = xds[(int64_t)m * chunks + c];
      acc[m] += ds.x * (ch.fa * (float)lo + ch.fb * (float)hi) + ch.fm * ds.y;
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float s = warp_sum(acc[m]);
    if (lane == 0) y[(int64_t)m * n_out + n] = from_f32<T>(s);
  }
}

// Prefill: the weight to T, one chunk a thread: grid (ceil(n * k / 32 / 128)), 128 threads.
template <typename T, int TY>
__device__ void dequantize(const uint8_t* __restrict__ w, T* __restrict__ out, int n, int k) {
  const int chunks = k / 32;
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= (int64_t)n * chunks) return;
  const int row = (int)(g / chunks), c = (int)(g % chunks);
  const Chunk ch =
      unpack<TY>(w + (int64_t)row * (k / QTraits<TY>::VALS) * QTraits<TY>::BYTES, c);
  T* o = out + (int64_t)row * k + 32 * c;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float q = (float)(int8_t)((ch.w[i] >> (8 * e)) & 0xFF);
      o[4 * i + e] = from_f32<T>((i < 4 ? ch.fa : ch.fb) * q + ch.fm);
    }
  }
}

#define QMV(T, SUF, TY, TN, M)                                                                 \
  extern "C" __global__ void __launch_bounds__(128)                                            \
      qmv_##TN##_m##M##_##SUF(const uint8_t* w, const int8_t* xq, const float2* xds, T* y,     \
                              int n_out, int k) {                                              \
    qmv<T, TY, M>(w, xq, xds, y, n_out, k);                                                    \
  }

#define FOR_TYPE(T, SUF, TY, TN)                                                               \
  QMV(T, SUF, TY, TN, 1) QMV(T, SUF, TY, TN, 2) QMV(T, SUF, TY, TN, 3) QMV(T, SUF, TY, TN, 4)  \
  QMV(T, SUF, TY, TN, 5) QMV(T, SUF, TY, TN, 6) QMV(T, SUF, TY, TN, 7) QMV(T, SUF, TY, TN, 8)  \
  extern "C" __global__ void __launch_bounds__(128)                                            \
      dequantize_##TN##_##SUF(const uint8_t* w, T* out, int n, int k) {                        \
    dequantize<T, TY>(w, out, n, k);                                                           \
  }

#define FOR_ELEM(T, SUF)                                                                       \
  FOR_TYPE(T, SUF, Q4_0, q4_0) FOR_TYPE(T, SUF, Q4_1, q4_1) FOR_TYPE(T, SUF, Q5_0, q5_0)       \
  FOR_TYPE(T, SUF, Q5_1, q5_1) FOR_TYPE(T, SUF, Q8_0, q8_0) FOR_TYPE(T, SUF, Q4_K, q4_k)       \
  FOR_TYPE(T, SUF, Q5_K, q5_k) FOR_TYPE(T, SUF, Q6_K, q6_k)                                    \
  extern "C" __global__ void __launch_bounds__(256)                                            \
      quantize_q8_1_##SUF(const T* x, int8_t* q, float2* ds, int k) {                          \
    quantize_q8_1<T>(x, q, ds, k);                                                             \
  }

FOR_ELEM(float, f32)
FOR_ELEM(__half, f16)
FOR_ELEM(__nv_bfloat16, bf16)
