//! The CPU attention backends: one paged KV cache in host memory, generic over what it
//! holds. f16 is llama.cpp's cache with its kernel (what serving runs: K transposed within
//! each block, V row-major); f32 is the reference kernel's (what the GPU checks compare
//! against: llama.cpp's f16 arithmetic would put a deliberate ~1e-3 between them).

use candle_core::{Device, Tensor};
use half::f16;

use super::llama_cpp::paged_attention_cpu_f16;
use super::reference::{
    paged_attention_cpu, LayerAttention, PagedAttentionShape, QueryKv, StepRows,
};
use crate::attention::AttentionBackend;
use crate::batch::FlatBatch;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCacheLayout;
use crate::ops::with_f32;

/// A CPU attention kernel over a paged cache of `T`: `(shape, q, k, v, step, out)`.
pub type AttentionKernel<T> = fn(PagedAttentionShape, QueryKv<'_, T>, StepRows<'_>, &mut [f32]);

/// What a CPU cache holds: how a step's K and V rows are stored, and the kernel that reads
/// them.
pub trait CpuCacheElem: Copy + Default + Send + Sync + 'static {
    /// Stores K rows (`data: [rows, width]`) at their slots.
    fn write_k(cache: &mut [Self], data: &[f32], slots: &[u32], layout: &KvCacheLayout);
    /// The kernel: attention of `q` over the cache of one layer.
    const ATTEND: AttentionKernel<Self>;
    fn from_f32(x: f32) -> Self;
    /// `n` zeros from zeroed memory (calloc): the pages are mapped as requests first write
    /// them, so an idle server's resident set does not hold the whole cache.
    fn zeroed(n: usize) -> Vec<Self>;
}

impl CpuCacheElem for f16 {
    fn write_k(cache: &mut [Self], data: &[f32], slots: &[u32], layout: &KvCacheLayout) {
        // K transposed within its block: [block, kv head, d, slot in block].
        let (width, bs) = (layout.num_kv_heads * layout.head_dim, layout.block_size);
        for (row, &slot) in slots.iter().enumerate() {
            let (block, i) = (slot as usize / bs, slot as usize % bs);
            for (j, &x) in data[row * width..(row + 1) * width].iter().enumerate() {
                cache[(block * width + j) * bs + i] = f16::from_f32(x);
            }
        }
    }

    const ATTEND: AttentionKernel<Self> = paged_attention_cpu_f16;

    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }

    fn zeroed(n: usize) -> Vec<Self> {
        // `vec![0u16; n]` is a zeroed allocation; `vec![f16::ZERO; n]` would write every
        // element (std's zeroed-allocation shortcut does not know f16).
        let mut bits = std::mem::ManuallyDrop::new(vec![0u16; n]);
        let (ptr, len, cap) = (bits.as_mut_ptr(), bits.len(), bits.capacity());
        // SAFETY: f16 is a transparent u16 (same size and alignment) and all-zero bits are
        // 0.0; the allocation moves from one Vec to the other with its length and capacity.
        unsafe { Vec::from_raw_parts(ptr.cast::<f16>(), len, cap) }
    }
}

impl CpuCacheElem for f32 {
    fn write_k(cache: &mut [Self], data: &[f32], slots: &[u32], layout: &KvCacheLayout) {
        write_rows(cache, data, slots, layout.num_kv_heads * layout.head_dim)
    }

    const ATTEND: AttentionKernel<Self> = paged_attention_cpu;

    fn from_f32(x: f32) -> Self {
        x
    }

    fn zeroed(n: usize) -> Vec<Self> {
        // std allocates zeroed memory for a literal 0.0.
        vec![0.0; n]
    }
}

/// Rows (`data: [rows, width]`) at their slots, row-major (V, and the f32 cache's K).
fn write_rows<T: CpuCacheElem>(cache: &mut [T], data: &[f32], slots: &[u32], width: usize) {
    for (row, &slot) in slots.iter().enumerate() {
        let s = slot as usize * width;
        for (dst, &x) in cache[s..s + width]
            .iter_mut()
            .zip(&data[row * width..(row + 1) * width])
        {
            *dst = T::from_f32(x);
        }
    }
}

/// A paged KV cache in host memory, `T` per element, with `T`'s kernel.
pub struct CpuAttention<T> {
    layout: KvCacheLayout,
    num_heads: usize,
    /// Per layer: scale and sliding window (empty: the defaults everywhere).
    layers: Vec<LayerAttention>,
    k: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
}

/// llama.cpp's f16 cache and kernel: what serving on the CPU runs.
pub type CpuPagedAttention = CpuAttention<f16>;
/// The f32 cache with the reference kernel ([`paged_attention_cpu`]): the GPU checks' CPU side.
pub type CpuReferenceAttention = CpuAttention<f32>;

impl<T: CpuCacheElem> CpuAttention<T> {
    pub fn new(layout: KvCacheLayout, num_heads: usize) -> Self {
        let per_layer = layout.num_slots() * layout.num_kv_heads * layout.head_dim;
        let zeros = || {
            (0..layout.num_layers)
                .map(|_| T::zeroed(per_layer))
                .collect()
        };
        Self {
            layout,
            num_heads,
            layers: Vec::new(),
            k: zeros(),
            v: zeros(),
        }
    }

    /// With each layer's scale and window (one entry per layer).
    pub fn with_layers(mut self, layers: Vec<LayerAttention>) -> Self {
        self.layers = layers;
        self
    }
}

impl<T: CpuCacheElem> AttentionBackend for CpuAttention<T> {
    fn write_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor, batch: &FlatBatch) -> Result<()> {
        let l = self.layout;
        let n_slots = l.num_slots();
        if let Some(slot) = batch.slot_mapping.iter().find(|&&s| s as usize >= n_slots) {
            return Err(EngineError::Cache(format!(
                "slot {slot} is outside the KV cache ({n_slots} slots)"
            )));
        }
        let slots = &batch.slot_mapping;
        let kc = &mut self.k[layer];
        with_f32(k, |data| T::write_k(kc, data, slots, &l))?;
        let vc = &mut self.v[layer];
        with_f32(v, |data| {
            write_rows(vc, data, slots, l.num_kv_heads * l.head_dim)
        })?;
        Ok(())
    }

    /// `q`: `[num_tokens, num_heads * head_dim]`; returns the same shape in `q`'s type.
    fn attend(&self, layer: usize, q: &Tensor, batch: &FlatBatch) -> Result<Tensor> {
        let l = self.layout;
        let shape =
            PagedAttentionShape::new(self.num_heads, l.num_kv_heads, l.head_dim, l.block_size)
                .for_layer(self.layers.get(layer).copied().unwrap_or_default());
        let n = batch.num_tokens();
        let width = self.num_heads * l.head_dim;
        let mut out = vec![0f32; n * width];
        let (k, v) = (&self.k[layer], &self.v[layer]);
        with_f32(q, |qd| {
            (T::ATTEND)(shape, (qd, k, v), StepRows::of(batch), &mut out)
        })?;
        Ok(Tensor::from_vec(out, (n, width), &Device::Cpu)?.to_dtype(q.dtype())?)
    }

    fn layout(&self) -> KvCacheLayout {
        self.layout
    }
}
