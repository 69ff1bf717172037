//! CUDA graphs for decode steps, as vLLM captures them: a decode step of a 8B model is a
//! few hundred kernel launches whose host-side cost (candle's op dispatch, allocations,
//! argument marshalling) exceeds the GPU time of the step at small batches. Each batch size
//! of [`capture_sizes`] is captured once after a warm-up into fixed device buffers; a step
//! of `n` sequences is padded to the next captured size, its inputs are copied into those
//! buffers and the graph is replayed.
//!
//! This file holds the host-side plan (sizes, padding: testable without a GPU, and read by
//! the attention backends' fixed buffers); `worker/graphs.rs` (feature `cuda`) captures and
//! replays.

use super::FlatBatch;
use crate::error::{EngineError, Result};

/// The largest batch captured (vLLM's v0 cap; v1's is 512). Larger decode batches run
/// eagerly, where launch costs are small beside the step.
pub const MAX_CAPTURE_SIZE: usize = 256;

/// The longest context a captured step serves. The decode kernel's grid is fixed at
/// capture, sized for this context (partitions past a sequence's length exit at once);
/// a step with a longer sequence runs eagerly (vLLM's `max_seq_len_to_capture`).
pub const MAX_CAPTURE_CONTEXT: usize = 8192;

/// Batch sizes to capture for at most `max_seqs` sequences: 1, 2, 4, then every multiple
/// of 8 (vLLM's list), up to the first size holding `max_seqs`.
pub fn capture_sizes(max_seqs: usize) -> Vec<usize> {
    let cap = max_seqs.clamp(1, MAX_CAPTURE_SIZE);
    let mut sizes = Vec::new();
    for s in [1, 2, 4]
        .into_iter()
        .chain((8..=MAX_CAPTURE_SIZE).step_by(8))
    {
        sizes.push(s);
        if s >= cap {
            break;
        }
    }
    sizes
}

/// The smallest captured size that holds `n` sequences.
pub fn padded_size(sizes: &[usize], n: usize) -> Option<usize> {
    sizes.iter().copied().find(|&s| s >= n)
}

/// Whether a step is a plain decode step a graph can replay: every sequence has exactly
/// one new token, and every row's logits are wanted, in order.
pub fn is_plain_decode(batch: &FlatBatch) -> bool {
    let n = batch.num_tokens();
    n > 0
        && batch.num_seqs() == n
        && batch.query_start_loc.iter().copied().eq(0..=n)
        && batch.logits_indices.iter().copied().eq(0..n)
}

/// A decode step laid out for the fixed buffers of a graph of `rows` rows: the batch's
/// sequences first, then padding rows (token 0 at position 0, no KV write (slot -1), one
/// key of context read from block 0; their outputs are never read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedDecode {
    pub rows: usize,
    /// Sequences of the batch (the rows that matter).
    pub num_seqs: usize,
    pub token_ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<i32>,
    pub context_lens: Vec<i32>,
    /// `rows × max_blocks`, row-major; unused entries 0.
    pub block_tables: Vec<i32>,
    pub max_context: usize,
}

/// Lays out a plain decode step (see [`is_plain_decode`]) as `rows` rows with block
/// tables `max_blocks` wide.
pub fn pad_decode(batch: &FlatBatch, rows: usize, max_blocks: usize) -> Result<PaddedDecode> {
    let n = batch.num_seqs();
    if n > 0 && !is_plain_decode(batch) {
        return Err(EngineError::Batch(
            "a decode graph replays plain decode steps only".into(),
        ));
    }
    if n > rows {
        return Err(EngineError::Batch(format!(
            "{n} sequences do not fit a graph of {rows} rows"
        )));
    }
    let mut p = PaddedDecode {
        rows,
        num_seqs: n,
        token_ids: vec![0; rows],
        positions: vec![0; rows],
        slots: vec![-1; rows],
        context_lens: vec![1; rows],
        block_tables: vec![0; rows * max_blocks],
        max_context: 1,
    };
    for s in 0..n {
        let table = &batch.block_tables[s];
        if table.len() > max_blocks {
            return Err(EngineError::Batch(format!(
                "sequence {s} has {} blocks, the graphs' tables hold {max_blocks}",
                table.len()
            )));
        }
        p.token_ids[s] = batch.token_ids[s];
        p.positions[s] = batch.positions[s];
        p.slots[s] = i32::try_from(batch.slot_mapping[s])
            .map_err(|_| EngineError::Batch("slot beyond i32".into()))?;
        p.context_lens[s] = batch.context_lens[s] as i32;
        p.max_context = p.max_context.max(batch.context_lens[s]);
        for (j, &b) in table.iter().enumerate() {
            p.block_tables[s * max_blocks + j] = b as i32;
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::LogitsWanted;

    #[test]
    fn sizes_follow_vllm_and_cover_max_seqs() {
        assert_eq!(capture_sizes(1), vec![1]);
        assert_eq!(capture_sizes(3), vec![1, 2, 4]);
        assert_eq!(capture_sizes(8), vec![1, 2, 4, 8]);
        assert_eq!(capture_sizes(20), vec![1, 2, 4, 8, 16, 24]);
        let s = capture_sizes(256);
        assert_eq!(s.len(), 3 + 32);
        assert_eq!(*s.last().unwrap(), 256);
        assert_eq!(*capture_sizes(10_000).last().unwrap(), MAX_CAPTURE_SIZE);
        for n in 1..=256 {
            let p = padded_size(&s, n).unwrap();
            assert!(p >= n && p - n < 8, "{n} -> {p}");
        }
        assert_eq!(padded_size(&s, 257), None);
    }

    fn decode_batch(ctx: &[usize], bs: usize) -> FlatBatch {
        let mut b = FlatBatch::default();
        let mut next = 0u32;
        for (i, &c) in ctx.iter().enumerate() {
            let nb = c.div_ceil(bs) as u32;
            let table: Vec<u32> = (next..next + nb).collect();
            next += nb;
            b.push_seq(&[10 + i as u32], c - 1, &table, bs, LogitsWanted::Last);
        }
        b
    }

    #[test]
    fn padding_keeps_the_batch_and_pads_harmlessly() {
        let b = decode_batch(&[5, 17, 33], 16);
        assert!(is_plain_decode(&b));
        let p = pad_decode(&b, 8, 4).unwrap();
        assert_eq!(p.num_seqs, 3);
        assert_eq!(&p.token_ids[..3], &[10, 11, 12]);
        assert_eq!(&p.positions[..3], &[4, 16, 32]);
        assert_eq!(
            &p.slots[..3],
            &b.slot_mapping.iter().map(|&s| s as i32).collect::<Vec<_>>()[..]
        );
        assert!(p.slots[3..].iter().all(|&s| s == -1));
        assert_eq!(&p.context_lens, &[5, 17, 33, 1, 1, 1, 1, 1]);
        assert_eq!(p.max_context, 33);
        // Sequence 1 owns blocks 1..3, sequence 2 blocks 3..6; padding rows read block 0.
        assert_eq!(&p.block_tables[4..8], &[1, 2, 0, 0]);
        assert_eq!(&p.block_tables[8..12], &[3, 4, 5, 0]);
        assert!(p.block_tables[12..].iter().all(|&x| x == 0));
        // All padding (what a capture runs).
        let e = pad_decode(&FlatBatch::default(), 4, 4).unwrap();
        assert_eq!(e.num_seqs, 0);
        assert!(e.slots.iter().all(|&s| s == -1));
    }

    #[test]
    fn refuses_what_a_graph_cannot_replay() {
        let b = decode_batch(&[5, 17, 33], 16);
        assert!(pad_decode(&b, 2, 4).is_err(), "too many sequences");
        assert!(
            pad_decode(&b, 4, 2).is_err(),
            "table wider than the graphs'"
        );
        let mut prefill = FlatBatch::default();
        prefill.push_seq(&[1, 2, 3], 0, &[0], 16, LogitsWanted::Last);
        assert!(!is_plain_decode(&prefill));
        assert!(pad_decode(&prefill, 4, 4).is_err());
        let mut all = FlatBatch::default();
        all.push_seq(&[1], 0, &[0], 16, LogitsWanted::None);
        assert!(!is_plain_decode(&all), "a row without logits");
    }
}
