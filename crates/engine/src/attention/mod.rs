//! Attention backends: write the step's K/V into the paged cache, then attend each query
//! to its sequence's keys through the block table (causal within the new tokens).

mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
mod cuda_backend;
#[cfg(feature = "cuda")]
pub use cuda_backend::CudaPagedAttention;
pub mod split;

pub(crate) use cpu::with_f32;
pub use cpu::{
    paged_attention_cpu, paged_attention_cpu_f16, CpuPagedAttention, CpuReferenceAttention,
    PagedAttentionShape,
};

use candle_core::Tensor;

use crate::batch::FlatBatch;
use crate::error::Result;

/// Layout of one layer's paged KV cache: `[num_blocks, block_size, num_kv_heads, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheLayout {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvCacheLayout {
    /// The cache's shape for a model.
    pub fn for_model(c: &crate::model::LlamaConfig, num_blocks: usize, block_size: usize) -> Self {
        Self {
            num_layers: c.num_layers,
            num_blocks,
            block_size,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        }
    }

    /// Bytes of K and V for one block across all layers, at `elem_bytes` per element.
    pub fn bytes_per_block(&self, elem_bytes: usize) -> usize {
        2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem_bytes
    }

    pub fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
}

/// Deterministic pseudo-random values in [-1, 1) for kernel checks and tests (an LCG: the
/// same seed gives the same inputs on every machine).
pub fn lcg_uniform(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub trait AttentionBackend: Send {
    /// Called once per forward pass before the first layer (a GPU backend uploads the
    /// batch's slots, block tables and lengths here, once for all layers).
    fn begin_step(&mut self, _batch: &FlatBatch) -> Result<()> {
        Ok(())
    }
    /// Stores `k`, `v` (`[num_tokens, num_kv_heads * head_dim]`) at the batch's slots.
    fn write_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor, batch: &FlatBatch) -> Result<()>;
    /// `q`: `[num_tokens, num_heads * head_dim]`; returns the same shape.
    fn attend(&self, layer: usize, q: &Tensor, batch: &FlatBatch) -> Result<Tensor>;
    fn layout(&self) -> KvCacheLayout;
    /// CUDA graphs: allocates fixed device buffers for decode steps of up to `max_seqs`
    /// sequences of up to `max_context` tokens (what a captured graph's kernels read).
    fn enable_fixed_decode(&mut self, _max_seqs: usize, _max_context: usize) -> Result<()> {
        Err(crate::EngineError::Config(
            "this attention backend has no fixed decode buffers".into(),
        ))
    }
    /// Copies a padded decode step into the fixed buffers; the layers' calls read them
    /// until the next `begin_step`. `batch` is the unpadded step, checked like `begin_step`.
    fn begin_fixed_decode(
        &mut self,
        _batch: &FlatBatch,
        _padded: &crate::graphs::PaddedDecode,
    ) -> Result<()> {
        Err(crate::EngineError::Config(
            "this attention backend has no fixed decode buffers".into(),
        ))
    }
}
