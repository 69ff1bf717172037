//! `KvCacheManager`: each request's block table, prefix-cache lookups and slot allocation.

use std::collections::HashMap;

use super::block_pool::{hash_block_tokens, BlockHash, BlockId, BlockPool};

pub type RequestId = u64;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Prompt tokens looked up in the prefix cache.
    pub queries: u64,
    /// Of those, tokens found cached.
    pub hits: u64,
}

#[derive(Debug, Default)]
struct RequestBlocks {
    blocks: Vec<BlockId>,
    /// Hashes of the request's full blocks, computed once.
    hashes: Vec<BlockHash>,
    /// How many of `blocks` are registered in the prefix cache.
    num_cached: usize,
}

pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    enable_caching: bool,
    /// Key cached blocks also by how many of their positions are prompt positions (see
    /// [`KvCacheManager::key_prompt_positions`]).
    key_prompt_positions: bool,
    requests: HashMap<RequestId, RequestBlocks>,
    pub stats: PrefixCacheStats,
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool) -> Self {
        Self {
            pool: BlockPool::new(num_blocks, enable_caching),
            block_size,
            enable_caching,
            key_prompt_positions: false,
            requests: HashMap::new(),
            stats: PrefixCacheStats::default(),
        }
    }

    /// Keys each cached block also by how many of its positions are prompt positions. The
    /// CPU backend computes prompt and generated positions in different orders (llama.cpp's),
    /// so a block whose tokens a later request has as prompt (a chat's earlier answer) holds
    /// KV that request would compute slightly differently: with these keys it is not reused,
    /// and a request's result does not depend on what is cached.
    pub fn key_prompt_positions(mut self, on: bool) -> Self {
        self.key_prompt_positions = on;
        self
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn usage(&self) -> f64 {
        self.pool.usage()
    }

    pub fn block_table(&self, req: RequestId) -> &[BlockId] {
        self.requests
            .get(&req)
            .map(|r| r.blocks.as_slice())
            .unwrap_or(&[])
    }

    fn ensure_hashes(&mut self, req: RequestId, tokens: &[u32], prompt_len: usize) {
        let bs = self.block_size;
        let by_prompt = self.key_prompt_positions;
        let entry = self.requests.entry(req).or_default();
        let full = tokens.len() / bs;
        while entry.hashes.len() < full {
            let i = entry.hashes.len();
            let parent = entry.hashes.last().copied();
            let prompt_positions = prompt_len.saturating_sub(i * bs).min(bs) as u64;
            let extra: &[u64] = if by_prompt { &[prompt_positions] } else { &[] };
            entry.hashes.push(hash_block_tokens(
                parent,
                &tokens[i * bs..(i + 1) * bs],
                extra,
            ));
        }
    }

    /// The longest run of cached full blocks that starts `tokens`, capped so that at least
    /// one prompt token is still computed (its logits are needed). Returns the blocks and
    /// the number of tokens they cover. Counts the lookup in the prefix-cache stats.
    pub fn find_cached_prefix(
        &mut self,
        req: RequestId,
        tokens: &[u32],
        prompt_len: usize,
    ) -> (Vec<BlockId>, usize) {
        if !self.enable_caching || tokens.is_empty() {
            return (Vec::new(), 0);
        }
        self.ensure_hashes(req, tokens, prompt_len);
        let max_blocks = (tokens.len() - 1) / self.block_size;
        let mut found = Vec::new();
        if let Some(r) = self.requests.get(&req) {
            for &h in r.hashes.iter().take(max_blocks) {
                match self.pool.get_cached_block(h) {
                    Some(b) => found.push(b),
                    None => break,
                }
            }
        }
        let n = found.len() * self.block_size;
        self.stats.queries += tokens.len() as u64;
        self.stats.hits += n as u64;
        (found, n)
    }

    /// Makes room for the request to hold `num_tokens` tokens in all, first adopting
    /// `cached` (from [`Self::find_cached_prefix`], for a request with no blocks yet).
    /// Registers blocks that `tokens` fills completely in the prefix cache (the first
    /// `prompt_len` of `tokens` are the request's prompt). Returns the new blocks, or `None`
    /// (and changes nothing) when the pool is short.
    pub fn allocate_slots(
        &mut self,
        req: RequestId,
        num_tokens: usize,
        cached: &[BlockId],
        tokens: &[u32],
        prompt_len: usize,
    ) -> Option<Vec<BlockId>> {
        let have = self.requests.get(&req).map(|r| r.blocks.len()).unwrap_or(0);
        let need_total = num_tokens.div_ceil(self.block_size);
        let need_new = need_total.saturating_sub(have + cached.len());
        // Cached blocks that sit in the free queue stop being free once adopted.
        let cached_free = cached.iter().filter(|&&b| self.pool.is_free(b)).count();
        if need_new + cached_free > self.pool.num_free_blocks() {
            return None;
        }
        self.pool.touch(cached);
        let new = self.pool.get_new_blocks(need_new)?;
        let entry = self.requests.entry(req).or_default();
        if !cached.is_empty() {
            // Adopted blocks are in the cache already (the request had none before them).
            entry.blocks.extend_from_slice(cached);
            entry.num_cached = entry.blocks.len();
        }
        entry.blocks.extend_from_slice(&new);
        if self.enable_caching {
            // Blocks whose tokens are all known after this step can serve later requests.
            let full = tokens.len().min(num_tokens) / self.block_size;
            self.ensure_hashes(req, &tokens[..full * self.block_size], prompt_len);
            let entry = self.requests.get_mut(&req)?;
            for i in entry.num_cached..full.min(entry.blocks.len()) {
                self.pool.cache_full_block(entry.blocks[i], entry.hashes[i]);
            }
            entry.num_cached = entry.num_cached.max(full.min(entry.blocks.len()));
        }
        Some(new)
    }

    /// Frees the request's blocks, last block first (so its tail is evicted first).
    pub fn free(&mut self, req: RequestId) {
        if let Some(r) = self.requests.remove(&req) {
            self.pool.free_blocks(r.blocks.into_iter().rev());
        }
    }

    /// Requests holding blocks.
    pub fn num_requests(&self) -> usize {
        self.requests
            .values()
            .filter(|r| !r.blocks.is_empty())
            .count()
    }

    /// Invariants for tests: the pool's own, plus each block's ref count equals the number
    /// of block tables that hold it.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool.check_invariants()?;
        let mut refs: HashMap<BlockId, u32> = HashMap::new();
        for r in self.requests.values() {
            for &b in &r.blocks {
                *refs.entry(b).or_default() += 1;
            }
        }
        for b in 0..self.pool.num_blocks() as BlockId {
            let want = refs.get(&b).copied().unwrap_or(0);
            if self.pool.ref_cnt(b) != want {
                return Err(format!(
                    "block {b}: ref count {} but held by {want} tables",
                    self.pool.ref_cnt(b)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_is_found_and_capped() {
        let mut m = KvCacheManager::new(8, 4, true);
        let a: Vec<u32> = (0..10).collect();
        assert_eq!(m.find_cached_prefix(1, &a, a.len()), (vec![], 0));
        m.allocate_slots(1, a.len(), &[], &a, a.len()).unwrap();
        assert_eq!(m.block_table(1).len(), 3);
        // Same first 8 tokens: two cached blocks.
        let b: Vec<u32> = (0..8).chain([99, 98]).collect();
        let (blocks, n) = m.find_cached_prefix(2, &b, b.len());
        assert_eq!((blocks.clone(), n), (m.block_table(1)[..2].to_vec(), 8));
        m.allocate_slots(2, b.len(), &blocks, &b, b.len()).unwrap();
        assert_eq!(m.pool().ref_cnt(blocks[0]), 2);
        m.check_invariants().unwrap();
        // A prompt that is exactly two cached blocks reuses only one: one token must run.
        let c: Vec<u32> = (0..8).collect();
        assert_eq!(m.find_cached_prefix(3, &c, c.len()).1, 4);
        m.free(1);
        m.free(2);
        m.check_invariants().unwrap();
        assert_eq!(m.pool().num_free_blocks(), 8);
        // Freed blocks stay findable.
        assert_eq!(m.find_cached_prefix(4, &b, b.len()).1, 8);
    }

    #[test]
    fn prompt_position_keys_keep_generated_blocks_from_a_later_prompt() {
        // A's 4-token prompt and 4 generated tokens fill two blocks of 4; B's prompt is all
        // eight plus more. With prompt-position keys B reuses only A's prompt block.
        for (keyed, want) in [(true, 4), (false, 8)] {
            let mut m = KvCacheManager::new(8, 4, true).key_prompt_positions(keyed);
            let a: Vec<u32> = (0..8).collect();
            m.allocate_slots(1, 8, &[], &a, 4).unwrap();
            let b: Vec<u32> = (0..12).collect();
            assert_eq!(
                m.find_cached_prefix(2, &b, b.len()).1,
                want,
                "keyed {keyed}"
            );
        }
    }

    #[test]
    fn allocation_fails_cleanly_when_short() {
        let mut m = KvCacheManager::new(2, 4, false);
        let t: Vec<u32> = (0..12).collect();
        assert!(m.allocate_slots(1, 12, &[], &t, t.len()).is_none());
        assert_eq!(m.pool().num_free_blocks(), 2);
        assert!(m.allocate_slots(1, 8, &[], &t, t.len()).is_some());
        m.check_invariants().unwrap();
    }
}
