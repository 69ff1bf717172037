//! The paged KV cache's bookkeeping: which physical blocks each request owns, with ref
//! counts and content hashes for prefix caching. The tensors themselves live in the
//! attention backend (`[num_blocks, block_size, num_kv_heads, head_dim]` per layer).

mod block_pool;
mod layout;
mod manager;

pub use block_pool::{hash_block_tokens, BlockHash, BlockId, BlockPool};
pub use layout::KvCacheLayout;
pub use manager::{KvCacheManager, PrefixCacheStats};
