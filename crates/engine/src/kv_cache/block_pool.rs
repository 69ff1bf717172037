//! `BlockPool`: a fixed set of KV blocks with ref counts, an LRU free queue (doubly linked,
//! O(1) removal from the middle) and a map from content hash to cached block.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

pub type BlockId = u32;
pub type BlockHash = u64;

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Block {
    ref_cnt: u32,
    /// Content hash once the block is full and cached; kept after the block is freed so
    /// a later request can still find it, until the free queue hands the block out again.
    hash: Option<BlockHash>,
    prev: u32,
    next: u32,
    in_free_queue: bool,
}

/// Hash of a full block: its parent's hash, its tokens and any extra keys (adapter ids,
/// cache salts) that make equal tokens mean different KV.
pub fn hash_block_tokens(
    parent: Option<BlockHash>,
    tokens: &[u32],
    extra_keys: &[u64],
) -> BlockHash {
    // DefaultHasher::new() has fixed keys: the same content always gives the same hash.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    extra_keys.hash(&mut h);
    h.finish()
}

#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    /// LRU free queue: evict from the head, return freed blocks to the tail.
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, BlockId>,
    enable_caching: bool,
}

impl BlockPool {
    pub fn new(num_blocks: usize, enable_caching: bool) -> Self {
        let mut pool = Self {
            blocks: vec![
                Block {
                    ref_cnt: 0,
                    hash: None,
                    prev: NONE,
                    next: NONE,
                    in_free_queue: false,
                };
                num_blocks
            ],
            head: NONE,
            tail: NONE,
            num_free: 0,
            cached: HashMap::new(),
            enable_caching,
        };
        for b in 0..num_blocks as u32 {
            pool.push_back(b);
        }
        pool
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.num_free
    }

    /// Fraction of blocks in use (ref count > 0), 0.0 ..= 1.0.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free as f64 / self.blocks.len() as f64
    }

    pub fn ref_cnt(&self, b: BlockId) -> u32 {
        self.blocks[b as usize].ref_cnt
    }

    pub fn is_free(&self, b: BlockId) -> bool {
        self.blocks[b as usize].in_free_queue
    }

    pub fn block_hash(&self, b: BlockId) -> Option<BlockHash> {
        self.blocks[b as usize].hash
    }

    fn push_back(&mut self, b: u32) {
        let blk = &mut self.blocks[b as usize];
        debug_assert!(!blk.in_free_queue);
        blk.prev = self.tail;
        blk.next = NONE;
        blk.in_free_queue = true;
        if self.tail != NONE {
            self.blocks[self.tail as usize].next = b;
        } else {
            self.head = b;
        }
        self.tail = b;
        self.num_free += 1;
    }

    fn unlink(&mut self, b: u32) {
        let (prev, next) = {
            let blk = &self.blocks[b as usize];
            debug_assert!(blk.in_free_queue);
            (blk.prev, blk.next)
        };
        if prev != NONE {
            self.blocks[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NONE {
            self.blocks[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        let blk = &mut self.blocks[b as usize];
        blk.prev = NONE;
        blk.next = NONE;
        blk.in_free_queue = false;
        self.num_free -= 1;
    }

    /// `n` fresh blocks (ref count 1) from the head of the free queue, evicting their cached
    /// hashes; `None` (and nothing taken) if fewer than `n` are free.
    pub fn get_new_blocks(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self.head;
            self.unlink(b);
            if let Some(h) = self.blocks[b as usize].hash.take() {
                if self.cached.get(&h) == Some(&b) {
                    self.cached.remove(&h);
                }
            }
            self.blocks[b as usize].ref_cnt = 1;
            out.push(b);
        }
        Some(out)
    }

    /// Takes a reference to cached blocks a request reuses (pulling free ones out of the queue).
    pub fn touch(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            if self.blocks[b as usize].ref_cnt == 0 {
                self.unlink(b);
            }
            self.blocks[b as usize].ref_cnt += 1;
        }
    }

    /// Drops one reference to each block, in the order given; blocks that reach zero go to
    /// the tail of the free queue (so pass a request's blocks tail first: its last blocks
    /// are evicted first).
    pub fn free_blocks(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        for b in blocks {
            let blk = &mut self.blocks[b as usize];
            debug_assert!(blk.ref_cnt > 0, "double free of block {b}");
            blk.ref_cnt = blk.ref_cnt.saturating_sub(1);
            if blk.ref_cnt == 0 {
                self.push_back(b);
            }
        }
    }

    /// Records that `b` holds the full block with content `hash`.
    pub fn cache_full_block(&mut self, b: BlockId, hash: BlockHash) {
        if !self.enable_caching {
            return;
        }
        let blk = &mut self.blocks[b as usize];
        if blk.hash.is_some() {
            return;
        }
        blk.hash = Some(hash);
        self.cached.entry(hash).or_insert(b);
    }

    pub fn get_cached_block(&self, hash: BlockHash) -> Option<BlockId> {
        if !self.enable_caching {
            return None;
        }
        self.cached.get(&hash).copied()
    }

    /// Checks the pool's own invariants (tests): the free queue holds exactly the blocks
    /// with ref count 0, linked consistently, and the cache map points at blocks with that hash.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = 0;
        let mut prev = NONE;
        let mut b = self.head;
        while b != NONE {
            let blk = &self.blocks[b as usize];
            if blk.ref_cnt != 0 || !blk.in_free_queue || blk.prev != prev {
                return Err(format!("free queue entry {b} inconsistent: {blk:?}"));
            }
            seen += 1;
            if seen > self.blocks.len() {
                return Err("free queue has a cycle".into());
            }
            prev = b;
            b = blk.next;
        }
        if prev != self.tail || seen != self.num_free {
            return Err(format!(
                "free queue length {seen}, counter {}",
                self.num_free
            ));
        }
        for (i, blk) in self.blocks.iter().enumerate() {
            if (blk.ref_cnt == 0) != blk.in_free_queue {
                return Err(format!(
                    "block {i}: ref count {} but in free queue {}",
                    blk.ref_cnt, blk.in_free_queue
                ));
            }
        }
        for (h, &b) in &self.cached {
            if self.blocks[b as usize].hash != Some(*h) {
                return Err(format!(
                    "cache map points {h:x} at block {b} which holds {:?}",
                    self.blocks[b as usize].hash
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
    fn lru_order_and_eviction_of_hashes() {
        let mut p = BlockPool::new(4, true);
        let a = p.get_new_blocks(2).unwrap();
        assert_eq!(a, vec![0, 1]);
        p.cache_full_block(0, 111);
        assert_eq!(p.get_cached_block(111), Some(0));
        // Freed tail first: block 1 goes back before block 0.
        p.free_blocks(a.iter().rev().copied());
        assert_eq!(p.num_free_blocks(), 4);
        // Still findable after free.
        assert_eq!(p.get_cached_block(111), Some(0));
        // Touching a free cached block takes it out of the queue.
        p.touch(&[0]);
        assert_eq!(p.ref_cnt(0), 1);
        assert!(!p.is_free(0));
        p.check_invariants().unwrap();
        p.free_blocks([0]);
        // Queue is now 2, 3, 1, 0: taking three hands out 2, 3, 1; the fourth evicts 0's hash.
        assert_eq!(p.get_new_blocks(3).unwrap(), vec![2, 3, 1]);
        assert_eq!(p.get_cached_block(111), Some(0));
        assert_eq!(p.get_new_blocks(1).unwrap(), vec![0]);
        assert_eq!(p.get_cached_block(111), None);
        assert!(p.get_new_blocks(1).is_none());
        p.check_invariants().unwrap();
    }

    #[test]
    fn hashes_chain_through_parents() {
        let a = hash_block_tokens(None, &[1, 2], &[]);
        assert_eq!(a, hash_block_tokens(None, &[1, 2], &[]));
        assert_ne!(a, hash_block_tokens(Some(a), &[1, 2], &[]));
        assert_ne!(a, hash_block_tokens(None, &[1, 2], &[7]));
    }
}
