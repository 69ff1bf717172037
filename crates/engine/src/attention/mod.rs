//! Attention backends: write the step's K/V into the paged cache, then attend each query
//! to its sequence's keys through the block table (causal within the new tokens).

mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod split;

pub use cpu::{
    paged_attention_cpu, paged_attention_cpu_f16, CpuAttention, CpuCacheElem, CpuPagedAttention,
    CpuReferenceAttention, LayerAttention, PagedAttentionShape, StepRows,
};
#[cfg(feature = "cuda")]
pub use cuda::{CudaPagedAttention, DecodeKernel};

use candle_core::Tensor;

use crate::batch::{FlatBatch, PaddedDecode};
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCacheLayout;

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
        Err(EngineError::Unavailable(
            "this attention backend has no fixed decode buffers".into(),
        ))
    }
    /// Copies a padded decode step into the fixed buffers; the layers' calls read them
    /// until the next `begin_step`. `batch` is the unpadded step, checked like `begin_step`.
    fn begin_fixed_decode(&mut self, _batch: &FlatBatch, _padded: &PaddedDecode) -> Result<()> {
        Err(EngineError::Unavailable(
            "this attention backend has no fixed decode buffers".into(),
        ))
    }
}
