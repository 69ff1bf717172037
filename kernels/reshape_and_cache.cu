// Writes one step's K and V rows into their KV-cache slots.
// key, value: [num_tokens, num_kv_heads * head_dim]; caches: [num_blocks, block_size,
// num_kv_heads, head_dim], so slot s's row starts at s * num_kv_heads * head_dim.
// A negative slot (padding) is skipped.
#include "common.cuh"

template <typename T>
__device__ void reshape_and_cache(const T* __restrict__ key, const T* __restrict__ value,
                                  T* __restrict__ k_cache, T* __restrict__ v_cache,
                                  const int32_t* __restrict__ slot_mapping, int width) {
  const int token = blockIdx.x;
  const int64_t slot = slot_mapping[token];
  if (slot < 0) return;
  const T* k = key + (int64_t)token * width;
  const T* v = value + (int64_t)token * width;
  T* kd = k_cache + slot * width;
  T* vd = v_cache + slot * width;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    kd[i] = k[i];
    vd[i] = v[i];
  }
}

#define RESHAPE_AND_CACHE(NAME, T)                                                          \
  extern "C" __global__ void NAME(const T* key, const T* value, T* k_cache, T* v_cache,     \
                                  const int32_t* slot_mapping, int width) {                 \
    reshape_and_cache<T>(key, value, k_cache, v_cache, slot_mapping, width);                \
  }

RESHAPE_AND_CACHE(reshape_and_cache_f32, float)
RESHAPE_AND_CACHE(reshape_and_cache_f16, __half)
RESHAPE_AND_CACHE(reshape_and_cache_bf16, __nv_bfloat16)
