//! Attention backends: write the step's K/V into the paged cache, then attend each query
//! to its sequence's keys through the block table (causal within the new tokens).

mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod split;

pub(crate) use cpu::with_f32;
pub use cpu::{paged_attention_cpu, CpuPagedAttention, PagedAttentionShape};

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
    /// Bytes of K and V for one block across all layers, at `elem_bytes` per element.
    pub fn bytes_per_block(&self, elem_bytes: usize) -> usize {
        2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem_bytes
    }

    pub fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
}

pub trait AttentionBackend: Send {
    /// Stores `k`, `v` (`[num_tokens, num_kv_heads * head_dim]`) at the batch's slots.
    fn write_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor, batch: &FlatBatch) -> Result<()>;
    /// `q`: `[num_tokens, num_heads * head_dim]`; returns the same shape.
    fn attend(&self, layer: usize, q: &Tensor, batch: &FlatBatch) -> Result<Tensor>;
    fn layout(&self) -> KvCacheLayout;
}
