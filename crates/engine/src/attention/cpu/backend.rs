//! The two CPU attention backends: the f16 cache with llama.cpp's kernel (what serving
//! runs) and the f32 cache with the reference kernel (what the GPU checks compare against).

use candle_core::{Device, Tensor};
use half::f16;

use super::llama_cpp::paged_attention_cpu_f16;
use super::reference::{paged_attention_cpu, PagedAttentionShape, StepRows};
use crate::attention::AttentionBackend;
use crate::batch::FlatBatch;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCacheLayout;
use crate::ops::with_f32;

/// Paged KV cache in host memory, f16 as llama.cpp keeps it: K transposed within each
/// block, V row-major; attention by [`paged_attention_cpu_f16`].
pub struct CpuPagedAttention {
    layout: KvCacheLayout,
    num_heads: usize,
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

impl CpuPagedAttention {
    pub fn new(layout: KvCacheLayout, num_heads: usize) -> Self {
        let per_layer = layout.num_slots() * layout.num_kv_heads * layout.head_dim;
        Self {
            layout,
            num_heads,
            k: (0..layout.num_layers)
                .map(|_| vec![f16::ZERO; per_layer])
                .collect(),
            v: (0..layout.num_layers)
                .map(|_| vec![f16::ZERO; per_layer])
                .collect(),
        }
    }
}

/// An f32 paged KV cache with the f32 reference kernel ([`paged_attention_cpu`]): the CPU
/// reference the GPU checks compare against (llama.cpp's f16 arithmetic would put a
/// deliberate ~1e-3 between them).
pub struct CpuReferenceAttention {
    layout: KvCacheLayout,
    num_heads: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl CpuReferenceAttention {
    pub fn new(layout: KvCacheLayout, num_heads: usize) -> Self {
        let per_layer = layout.num_slots() * layout.num_kv_heads * layout.head_dim;
        let zeros = || {
            (0..layout.num_layers)
                .map(|_| vec![0f32; per_layer])
                .collect()
        };
        Self {
            layout,
            num_heads,
            k: zeros(),
            v: zeros(),
        }
    }
}

impl AttentionBackend for CpuReferenceAttention {
    fn write_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor, batch: &FlatBatch) -> Result<()> {
        check_slots(&self.layout, batch)?;
        let width = self.layout.num_kv_heads * self.layout.head_dim;
        for (cache, t) in [(&mut self.k[layer], k), (&mut self.v[layer], v)] {
            with_f32(t, |data| {
                for (row, &slot) in batch.slot_mapping.iter().enumerate() {
                    let s = slot as usize * width;
                    cache[s..s + width].copy_from_slice(&data[row * width..(row + 1) * width]);
                }
            })?;
        }
        Ok(())
    }

    fn attend(&self, layer: usize, q: &Tensor, batch: &FlatBatch) -> Result<Tensor> {
        attend_on_cpu(self.layout, self.num_heads, q, batch, |shape, q, out| {
            paged_attention_cpu(
                shape,
                q,
                &self.k[layer],
                &self.v[layer],
                StepRows::of(batch),
                out,
            )
        })
    }

    fn layout(&self) -> KvCacheLayout {
        self.layout
    }
}

/// The step's slots all lie inside a cache of `layout`.
fn check_slots(layout: &KvCacheLayout, batch: &FlatBatch) -> Result<()> {
    let n_slots = layout.num_slots();
    match batch.slot_mapping.iter().find(|&&s| s as usize >= n_slots) {
        Some(slot) => Err(EngineError::Cache(format!(
            "slot {slot} is outside the KV cache ({n_slots} slots)"
        ))),
        None => Ok(()),
    }
}

/// A CPU backend's `attend`: `kernel(shape, q, out)` over the step's rows, as a tensor of
/// `q`'s type `[num_tokens, num_heads * head_dim]`.
fn attend_on_cpu(
    layout: KvCacheLayout,
    num_heads: usize,
    q: &Tensor,
    batch: &FlatBatch,
    kernel: impl FnOnce(PagedAttentionShape, &[f32], &mut [f32]),
) -> Result<Tensor> {
    let shape = PagedAttentionShape::new(
        num_heads,
        layout.num_kv_heads,
        layout.head_dim,
        layout.block_size,
    );
    let n = batch.num_tokens();
    let mut out = vec![0f32; n * num_heads * layout.head_dim];
    with_f32(q, |qd| kernel(shape, qd, &mut out))?;
    Ok(
        Tensor::from_vec(out, (n, num_heads * layout.head_dim), &Device::Cpu)?
            .to_dtype(q.dtype())?,
    )
}

impl AttentionBackend for CpuPagedAttention {
    fn write_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor, batch: &FlatBatch) -> Result<()> {
        check_slots(&self.layout, batch)?;
        let width = self.layout.num_kv_heads * self.layout.head_dim;
        let bs = self.layout.block_size;
        let kt = &mut self.k[layer];
        with_f32(k, |data| {
            // K transposed within its block: [block, kv head, d, slot in block].
            for (row, &slot) in batch.slot_mapping.iter().enumerate() {
                let (block, i) = (slot as usize / bs, slot as usize % bs);
                for (j, &x) in data[row * width..(row + 1) * width].iter().enumerate() {
                    kt[(block * width + j) * bs + i] = f16::from_f32(x);
                }
            }
        })?;
        let vc = &mut self.v[layer];
        with_f32(v, |data| {
            for (row, &slot) in batch.slot_mapping.iter().enumerate() {
                let s = slot as usize * width;
                for (dst, &x) in vc[s..s + width]
                    .iter_mut()
                    .zip(&data[row * width..(row + 1) * width])
                {
                    *dst = f16::from_f32(x);
                }
            }
        })?;
        Ok(())
    }

    fn attend(&self, layer: usize, q: &Tensor, batch: &FlatBatch) -> Result<Tensor> {
        attend_on_cpu(self.layout, self.num_heads, q, batch, |shape, q, out| {
            paged_attention_cpu_f16(
                shape,
                q,
                &self.k[layer],
                &self.v[layer],
                StepRows::of(batch),
                out,
            )
        })
    }

    fn layout(&self) -> KvCacheLayout {
        self.layout
    }
}
