//! The flat batch: every token the model computes in one step, from every request,
//! laid end to end. Prefill chunks and decode tokens mix freely. `padded.rs` lays a decode
//! step out for a CUDA graph's fixed buffers.

mod padded;

pub use padded::{
    capture_sizes, is_plain_decode, pad_decode, padded_size, PaddedDecode, MAX_CAPTURE_CONTEXT,
    MAX_CAPTURE_SIZE,
};

/// Per-step inputs of the model, on the host. The attention backend reads K/V through
/// `block_tables` and writes the step's K/V at `slot_mapping`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlatBatch {
    /// Token ids, all sequences' new tokens concatenated.
    pub token_ids: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
    /// KV slot of each token: `block_id * block_size + offset_in_block`.
    pub slot_mapping: Vec<u32>,
    /// Where each sequence's tokens start in the flat arrays; `num_seqs + 1` entries.
    pub query_start_loc: Vec<usize>,
    /// Tokens in each sequence's KV after this step (cached + new).
    pub context_lens: Vec<usize>,
    /// Each sequence's block table (physical block ids in order).
    pub block_tables: Vec<Vec<u32>>,
    /// Rows of the flat batch whose logits are wanted (usually each sequence's last token).
    pub logits_indices: Vec<usize>,
    /// Each sequence's prompt length (0 unless set by [`FlatBatch::set_prompt_len`]): rows
    /// at positions below it are prompt rows, which the CPU backend computes in llama.cpp's
    /// prompt-processing order rather than its decode order (attention/cpu/llama_cpp.rs). A property
    /// of the row, so results still do not depend on the batch or the chunking (the prefix
    /// cache keys blocks by it too: `KvCacheManager::key_prompt_positions`).
    pub prompt_lens: Vec<usize>,
}

impl FlatBatch {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.context_lens.len()
    }

    /// Appends one sequence's new tokens. `start_pos` is the number of its tokens already
    /// in the KV cache; `want_logits` picks the rows that get logits: `Last` or `All`.
    pub fn push_seq(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        block_table: &[u32],
        block_size: usize,
        want_logits: LogitsWanted,
    ) {
        if self.query_start_loc.is_empty() {
            self.query_start_loc.push(0);
        }
        let first_row = self.token_ids.len();
        for (i, &t) in tokens.iter().enumerate() {
            let pos = start_pos + i;
            self.token_ids.push(t);
            self.positions.push(pos as u32);
            let block = block_table[pos / block_size];
            self.slot_mapping
                .push(block * block_size as u32 + (pos % block_size) as u32);
        }
        self.query_start_loc.push(self.token_ids.len());
        self.context_lens.push(start_pos + tokens.len());
        self.block_tables.push(block_table.to_vec());
        self.prompt_lens.push(0);
        match want_logits {
            LogitsWanted::None => {}
            LogitsWanted::Last => {
                if !tokens.is_empty() {
                    self.logits_indices.push(self.token_ids.len() - 1)
                }
            }
            LogitsWanted::All => self.logits_indices.extend(first_row..self.token_ids.len()),
        }
    }
}

impl FlatBatch {
    /// Sets the prompt length of the sequence pushed last.
    pub fn set_prompt_len(&mut self, prompt_len: usize) {
        if let Some(p) = self.prompt_lens.last_mut() {
            *p = prompt_len;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    None,
    Last,
    All,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_block_table() {
        let mut b = FlatBatch::default();
        // Sequence 0: 3 cached tokens, 3 new, blocks [7, 2] of size 4.
        b.push_seq(&[10, 11, 12], 3, &[7, 2], 4, LogitsWanted::Last);
        // Sequence 1: fresh prompt of 2 tokens in block 5.
        b.push_seq(&[20, 21], 0, &[5], 4, LogitsWanted::All);
        assert_eq!(b.positions, vec![3, 4, 5, 0, 1]);
        assert_eq!(
            b.slot_mapping,
            vec![7 * 4 + 3, 2 * 4, 2 * 4 + 1, 5 * 4, 5 * 4 + 1]
        );
        assert_eq!(b.query_start_loc, vec![0, 3, 5]);
        assert_eq!(b.context_lens, vec![6, 2]);
        assert_eq!(b.logits_indices, vec![2, 3, 4]);
        assert_eq!(b.num_seqs(), 2);
        assert_eq!(b.num_tokens(), 5);
    }
}
