// Sampling on the device: the CPU sampler's processing, cuts and draw for a whole batch,
// only the sampled ids crossing to the host. The algorithm is crates/engine/src/sampling/
// select.rs (the CPU form, tested there against the CPU sampler):
//
// sampling_adjust: one thread per touched (row, token) entry, applied in the CPU's order
//   (+ bias, repetition penalty, - frequency * count - presence, the min_tokens mask).
// sampling_select: one CTA per row. Every best-first prefix the CPU sampler walks (top-k,
//   top-p, min-p, the draw) is a threshold on a 64-bit order key (higher logit first, then
//   lower id), found by a radix-16 search: each pass sums (count, probability) of the
//   candidates in 16 buckets of the next 4 key bits, and the first bucket where the running
//   sum meets the condition fixes them; a bucket of one candidate ends the search.
//   Probabilities are f64, exp((l - max) / T) / z as the CPU computes them; sums run in
//   parallel, so a draw differs from the CPU's only within ~1e-15 of a boundary.
// sampling_logprobs: one CTA per row that asks for log-probs, on the raw logits (before any
//   processing, as vLLM reports them): the chosen token's log-prob and rank, and the k best
//   tokens (found by the same search), unordered (the host sorts at most k of them).
#include "common.cuh"
#include <float.h>

#define SEL_THREADS 512
#define SEL_WARPS (SEL_THREADS / 32)

typedef unsigned long long u64;

__device__ __forceinline__ u64 order_key(float l, unsigned id) {
  const unsigned b = __float_as_uint(l);
  const unsigned asc = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ((u64)(~asc) << 32) | id;
}

// Calls f(l, i) for every logit of the row that this thread owns: 16-byte loads, two in flight.
// With one 4-byte load a thread, 1000 rows of 128k took 17 ms on an H200 (2026-12-04), several
// times what their passes' bytes take at the copy rate: the passes look bound by load latency,
// so each thread keeps eight values in flight. Rows whose length or start is not a multiple
// of four go a value at a time.
template <typename F>
__device__ __forceinline__ void for_each_logit(const float* __restrict__ row, int vocab, F&& f) {
  if ((vocab & 3) == 0 && (reinterpret_cast<uintptr_t>(row) & 15) == 0) {
    const float4* r4 = reinterpret_cast<const float4*>(row);
    const int n4 = vocab >> 2;
    int i = threadIdx.x;
    for (; i + SEL_THREADS < n4; i += 2 * SEL_THREADS) {
      const float4 a = __ldg(r4 + i), b = __ldg(r4 + i + SEL_THREADS);
      const int ia = 4 * i, ib = 4 * (i + SEL_THREADS);
      f(a.x, ia);
      f(a.y, ia + 1);
      f(a.z, ia + 2);
      f(a.w, ia + 3);
      f(b.x, ib);
      f(b.y, ib + 1);
      f(b.z, ib + 2);
      f(b.w, ib + 3);
    }
    if (i < n4) {
      const float4 a = __ldg(r4 + i);
      f(a.x, 4 * i);
      f(a.y, 4 * i + 1);
      f(a.z, 4 * i + 2);
      f(a.w, 4 * i + 3);
    }
  } else {
    for (int i = threadIdx.x; i < vocab; i += SEL_THREADS) f(__ldg(row + i), i);
  }
}

// Entry flags: which of the processing steps a token takes.
#define ADJ_BIAS 1
#define ADJ_REP 2
#define ADJ_SUB 4
#define ADJ_MASK 8

extern "C" __global__ void sampling_adjust(float* __restrict__ logits, int vocab, int n,
                                           const int* __restrict__ row, const int* __restrict__ token,
                                           const int* __restrict__ flags, const float* __restrict__ bias,
                                           const float* __restrict__ rep, const float* __restrict__ sub) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float* p = logits + (int64_t)row[i] * vocab + token[i];
  float l = *p;
  const int f = flags[i];
  // Round-to-nearest intrinsics: the build's fast math would approximate `/` and could fuse
  // a multiply with the next subtraction; the CPU does neither.
  if (f & ADJ_BIAS) l = __fadd_rn(l, bias[i]);
  if (f & ADJ_REP) l = l > 0.f ? __fdiv_rn(l, rep[i]) : __fmul_rn(l, rep[i]);
  if (f & ADJ_SUB) l = __fsub_rn(l, sub[i]);
  if (f & ADJ_MASK) l = -INFINITY;
  *p = l;
}

// What thread 0 decided, shared with the CTA.
struct SelShared {
  u64 red_u[SEL_WARPS];
  double red_d[SEL_WARPS];
  u64 b_cnt[SEL_WARPS][16];
  double b_mass[SEL_WARPS][16];
  u64 key;
  u64 prefix;
  int state;  // 0: go on, 1: found (key), 2: not found, 3: found a one-candidate bucket (key looked up)
  double base_m;
  u64 base_c;
};

__device__ u64 block_sum_u64(u64 v, SelShared& s) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (threadIdx.x % 32 == 0) s.red_u[threadIdx.x / 32] = v;
  __syncthreads();
  u64 t = 0;
  for (int w = 0; w < SEL_WARPS; ++w) t += s.red_u[w];
  return t;
}

// The CTA's smallest (or, MAX, largest) value.
template <bool MAX>
__device__ u64 block_extreme_u64(u64 v, SelShared& s) {
  const auto pick = [](u64 a, u64 b) { return (MAX ? a > b : a < b) ? a : b; };
  for (int o = 16; o > 0; o >>= 1) v = pick(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (threadIdx.x % 32 == 0) s.red_u[threadIdx.x / 32] = v;
  __syncthreads();
  u64 t = s.red_u[0];
  for (int w = 1; w < SEL_WARPS; ++w) t = pick(t, s.red_u[w]);
  return t;
}

__device__ u64 block_min_u64(u64 v, SelShared& s) { return block_extreme_u64<false>(v, s); }
__device__ u64 block_max_u64(u64 v, SelShared& s) { return block_extreme_u64<true>(v, s); }

__device__ double block_sum_f64(double v, SelShared& s) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (threadIdx.x % 32 == 0) s.red_d[threadIdx.x / 32] = v;
  __syncthreads();
  double t = 0.0;
  for (int w = 0; w < SEL_WARPS; ++w) t += s.red_d[w];
  return t;
}

// The softmax weight the CPU gives a logit: exp((l - max) / T) as exp((l - max) * (1 / T)).
struct Softmax {
  double max, inv_t, z;
  __device__ double prob(float l) const { return exp(((double)l - max) * inv_t) / z; }
};

enum Pred { COUNT_GE = 0, MASS_GE = 1, MASS_GT = 2 };

// The minimal candidate key t <= bound whose prefix's (count, mass) meets the predicate;
// false when none does. MASS false: count only (no probability is computed).
//
// Each thread sums its candidates per bucket in registers: every bucket's update is
// predicated on the candidate's bucket over compile-time indices. (Indexed at run time, the
// sixteen-bucket arrays lived in local memory: 1000 rows of 128k took 14 ms on an H200.) A
// bucket of one candidate ends the search; one more pass looks its key up.
template <bool MASS>
__device__ bool search(const float* __restrict__ row, int vocab, const Softmax& sm, u64 bound,
                       int pred, double target, u64* out, SelShared& s) {
  if (threadIdx.x == 0) {
    s.prefix = 0;
    s.base_c = 0;
    s.base_m = 0.0;
    s.state = 0;
  }
  __syncthreads();
  int shift = 60;
  for (; shift >= 0; shift -= 4) {
    const u64 prefix = s.prefix;
    unsigned cnt[16];
    double mass[16];
#pragma unroll
    for (int b = 0; b < 16; ++b) {
      cnt[b] = 0;
      mass[b] = 0.0;
    }
    for_each_logit(row, vocab, [&](float l, int i) {
      if (!isfinite(l)) return;
      const u64 k = order_key(l, i);
      if (k > bound || (shift < 60 && (k >> (shift + 4)) != prefix)) return;
      const int b = (int)((k >> shift) & 15);
      double p = 0.0;
      if (MASS) p = sm.prob(l);
#pragma unroll
      for (int bb = 0; bb < 16; ++bb) {
        cnt[bb] += b == bb ? 1u : 0u;
        if (MASS) mass[bb] += b == bb ? p : 0.0;
      }
    });
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int b = 0; b < 16; ++b) {
      unsigned c = cnt[b];
      double w = mass[b];
      for (int o = 16; o > 0; o >>= 1) {
        c += __shfl_xor_sync(0xffffffffu, c, o);
        if (MASS) w += __shfl_xor_sync(0xffffffffu, w, o);
      }
      if (lane == 0) {
        s.b_cnt[warp][b] = c;
        s.b_mass[warp][b] = w;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int found = -1;
      u64 fc = 0;
      for (int b = 0; b < 16 && found < 0; ++b) {
        u64 c = 0;
        double w = 0.0;
        for (int v = 0; v < SEL_WARPS; ++v) {
          c += s.b_cnt[v][b];
          w += s.b_mass[v][b];
        }
        if (c == 0) continue;
        const u64 rc = s.base_c + c;
        const double rm = s.base_m + w;
        const bool ok = pred == COUNT_GE ? rc >= (u64)target : pred == MASS_GE ? rm >= target : rm > target;
        if (ok) {
          found = b;
          fc = c;
        } else {
          s.base_c = rc;
          s.base_m = rm;
        }
      }
      if (found < 0) {
        s.state = 2;
      } else {
        s.prefix = (prefix << 4) | (u64)found;
        if (shift == 0) {
          s.state = 1;
          s.key = s.prefix;
        } else if (fc == 1) {
          s.state = 3;
        }
      }
    }
    __syncthreads();
    if (s.state != 0) break;
  }
  if (s.state == 3) {
    // The found bucket's one candidate: the only key <= bound with the found prefix.
    const u64 want = s.prefix;
    u64 best = ~0ull;
    for_each_logit(row, vocab, [&](float l, int i) {
      if (!isfinite(l)) return;
      const u64 k = order_key(l, i);
      if (k <= bound && (k >> shift) == want && k < best) best = k;
    });
    best = block_min_u64(best, s);
    if (threadIdx.x == 0) {
      s.key = best;
      s.state = 1;
    }
    __syncthreads();
  }
  const bool ok = s.state == 1;
  *out = s.key;
  __syncthreads();
  return ok;
}

// One CTA per row: temperature (0: greedy), top-k (0: none), top-p, min-p and the row's
// uniform draw; writes the chosen id.
extern "C" __global__ void __launch_bounds__(SEL_THREADS)
    sampling_select(const float* __restrict__ logits, int vocab, const float* __restrict__ temperature,
                    const int* __restrict__ top_k, const float* __restrict__ top_p,
                    const float* __restrict__ min_p, const double* __restrict__ u,
                    int* __restrict__ out) {
  __shared__ SelShared s;
  const int r = blockIdx.x;
  const float* row = logits + (int64_t)r * vocab;
  // The best key of all non-NaN values (argmax: the first largest) and of the finite ones.
  u64 best_all = ~0ull, best_fin = ~0ull, n_fin = 0;
  for_each_logit(row, vocab, [&](float l, int i) {
    if (isnan(l)) return;
    const u64 k = order_key(l, i);
    best_all = k < best_all ? k : best_all;
    if (isfinite(l)) {
      best_fin = k < best_fin ? k : best_fin;
      n_fin += 1;
    }
  });
  best_all = block_min_u64(best_all, s);
  best_fin = block_min_u64(best_fin, s);
  n_fin = block_sum_u64(n_fin, s);
  const float t_row = temperature[r];
  if (t_row == 0.f || n_fin == 0) {
    if (threadIdx.x == 0) out[r] = best_all == ~0ull ? 0 : (int)(unsigned)best_all;
    return;
  }
  u64 bound = ~0ull;
  const u64 k = (u64)(unsigned)top_k[r];
  Softmax sm;
  sm.max = (double)row[(unsigned)best_fin];
  sm.inv_t = 1.0 / (double)t_row;
  sm.z = 1.0;
  if (k > 0 && k < n_fin) {
    u64 t;
    if (search<false>(row, vocab, sm, ~0ull, COUNT_GE, (double)k, &t, s)) bound = t;
  }
  double zp = 0.0;
  for_each_logit(row, vocab, [&](float l, int i) {
    if (isfinite(l) && order_key(l, i) <= bound) zp += sm.prob(l);
  });
  sm.z = block_sum_f64(zp, s);
  u64 cut = bound;
  const float tp = top_p[r], mp = min_p[r];
  if (tp < 1.f) {
    u64 t;
    if (search<true>(row, vocab, sm, bound, MASS_GE, (double)tp, &t, s)) cut = t;
  }
  if (mp > 0.f) {
    const double floor = (1.0 / sm.z) * (double)mp;
    u64 c = 0;
    for_each_logit(row, vocab, [&](float l, int i) {
      if (isfinite(l) && order_key(l, i) <= bound && sm.prob(l) >= floor) c += 1;
    });
    c = block_sum_u64(c, s);
    u64 t;
    if (search<false>(row, vocab, sm, bound, COUNT_GE, (double)(c > 0 ? c : 1), &t, s))
      cut = t < cut ? t : cut;
  }
  double mass = 1.0;
  if (tp < 1.f || mp > 0.f) {
    double m = 0.0;
    for_each_logit(row, vocab, [&](float l, int i) {
      if (isfinite(l) && order_key(l, i) <= cut) m += sm.prob(l);
    });
    mass = block_sum_f64(m, s);
  }
  u64 t;
  if (!search<true>(row, vocab, sm, cut, MASS_GT, u[r] * mass, &t, s)) {
    // The sums fell a few ulps short of the draw: the last kept candidate, as the CPU takes.
    u64 last = 0;
    for_each_logit(row, vocab, [&](float l, int i) {
      if (isfinite(l)) {
        const u64 key = order_key(l, i);
        if (key <= cut && key > last) last = key;
      }
    });
    t = block_max_u64(last, s);
  }
  if (threadIdx.x == 0) out[r] = (int)(unsigned)t;
}

// The raw row's log-probs: lp(x) = (x - lse) in f32 with lse = max + ln(sum exp(x - max)) (f64
// normaliser, `x - max` in f32), as `log_softmax_in_place`. Rows with want_k < 0 are skipped.
extern "C" __global__ void __launch_bounds__(SEL_THREADS)
    sampling_logprobs(const float* __restrict__ raw, int vocab, const int* __restrict__ want_k,
                      const int* __restrict__ chosen, int kmax, float* __restrict__ chosen_lp,
                      int* __restrict__ rank, int* __restrict__ top_ids,
                      float* __restrict__ top_lp, int* __restrict__ top_n) {
  __shared__ SelShared s;
  __shared__ int s_n;
  const int r = blockIdx.x;
  const int k = want_k[r];
  if (k < 0) return;  // uniform for the CTA
  const float* row = raw + (int64_t)r * vocab;
  u64 best = ~0ull;
  for_each_logit(row, vocab, [&](float l, int i) {
    if (!isnan(l)) {
      const u64 key = order_key(l, i);
      best = key < best ? key : best;
    }
  });
  best = block_min_u64(best, s);
  const float max = best == ~0ull ? -INFINITY : row[(unsigned)best];
  double sum = 0.0;
  for_each_logit(row, vocab, [&](float l, int) { sum += exp((double)(l - max)); });
  sum = block_sum_f64(sum, s);
  const double lse = (double)max + log(sum);
  const int c = chosen[r];
  const float lpc = (c >= 0 && c < vocab) ? (float)((double)row[c] - lse) : -INFINITY;
  u64 above = 0;
  for_each_logit(row, vocab, [&](float l, int) {
    if ((float)((double)l - lse) > lpc) above += 1;
  });
  above = block_sum_u64(above, s);
  if (threadIdx.x == 0) {
    chosen_lp[r] = lpc;
    rank[r] = (int)(1 + above);
    s_n = 0;
  }
  __syncthreads();
  const int want = min(k, kmax);
  u64 t = ~0ull;
  if (want > 0) {
    // The want-th best finite key (all finite ones when there are fewer).
    if (!search<false>(row, vocab, Softmax{0.0, 1.0, 1.0}, ~0ull, COUNT_GE, (double)want, &t, s)) t = ~0ull;
    for_each_logit(row, vocab, [&](float l, int i) {
      if (isfinite(l) && order_key(l, i) <= t) {
        const int slot = atomicAdd(&s_n, 1);
        if (slot < kmax) {
          top_ids[(int64_t)r * kmax + slot] = i;
          top_lp[(int64_t)r * kmax + slot] = (float)((double)l - lse);
        }
      }
    });
  }
  __syncthreads();
  if (threadIdx.x == 0) top_n[r] = want > 0 ? min(s_n, kmax) : 0;
}
