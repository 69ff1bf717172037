//! The shape of the paged KV cache that the attention backends hold.

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
