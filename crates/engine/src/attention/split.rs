//! Split-K ("v2") paged decode attention: the launch heuristic the CUDA backend uses, and a
//! CPU reference of its partition-and-reduce math, tested here against the plain kernel.

/// Keys per partition when a sequence's keys are split across thread blocks (vLLM's 512).
pub const PARTITION_SIZE: usize = 512;

/// How a decode attention call is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLaunch {
    pub num_partitions: usize,
    pub partition_size: usize,
}

/// vLLM's rule: one pass when contexts are short or the grid is already large enough to
/// fill the GPU; split-K otherwise.
pub fn choose_decode_launch(
    num_seqs: usize,
    num_heads: usize,
    max_context_len: usize,
) -> DecodeLaunch {
    let parts = max_context_len.div_ceil(PARTITION_SIZE).max(1);
    let single = max_context_len <= 8192 && (parts == 1 || num_seqs * num_heads > 512);
    if single {
        DecodeLaunch {
            num_partitions: 1,
            partition_size: max_context_len.max(1),
        }
    } else {
        DecodeLaunch {
            num_partitions: parts,
            partition_size: PARTITION_SIZE,
        }
    }
}

/// One query per sequence, like the CUDA kernel: `q`, `out` `[num_seqs, num_heads, head_dim]`,
/// caches `[num_blocks, block_size, num_kv_heads, head_dim]`, `block_tables` padded to
/// `max_blocks` per sequence. Splits each sequence's keys into `partition_size` chunks,
/// computes normalised partial outputs with their max logit and exp-sum, then combines them.
#[allow(clippy::too_many_arguments)]
pub fn paged_decode_split_reference(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    block_tables: &[i32],
    max_blocks: usize,
    context_lens: &[i32],
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    partition_size: usize,
) -> Vec<f32> {
    let scale = 1.0 / (head_dim as f32).sqrt();
    let row = num_kv_heads * head_dim;
    let mut out = vec![0f32; context_lens.len() * num_heads * head_dim];
    for (s, &ctx) in context_lens.iter().enumerate() {
        let ctx = ctx as usize;
        for h in 0..num_heads {
            let kvh = h / (num_heads / num_kv_heads);
            let qv = &q[(s * num_heads + h) * head_dim..][..head_dim];
            let mut parts: Vec<(Vec<f32>, f32, f32)> = Vec::new();
            for start in (0..ctx).step_by(partition_size.max(1)) {
                let end = (start + partition_size).min(ctx);
                let mut m = f32::NEG_INFINITY;
                let mut scores = Vec::with_capacity(end - start);
                for t in start..end {
                    let slot = block_tables[s * max_blocks + t / block_size] as usize * block_size
                        + t % block_size;
                    let k = &k_cache[slot * row + kvh * head_dim..][..head_dim];
                    let d: f32 = qv.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                    m = m.max(d);
                    scores.push((slot, d));
                }
                let mut l = 0f32;
                let mut acc = vec![0f32; head_dim];
                for &(slot, d) in &scores {
                    let p = (d - m).exp();
                    l += p;
                    let v = &v_cache[slot * row + kvh * head_dim..][..head_dim];
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += p * x;
                    }
                }
                acc.iter_mut().for_each(|a| *a /= l);
                parts.push((acc, m, l));
            }
            let gm = parts.iter().map(|p| p.1).fold(f32::NEG_INFINITY, f32::max);
            let denom: f32 = parts.iter().map(|p| p.2 * (p.1 - gm).exp()).sum();
            let o = &mut out[(s * num_heads + h) * head_dim..][..head_dim];
            for (acc, m, l) in &parts {
                let w = l * (m - gm).exp() / denom;
                for (x, a) in o.iter_mut().zip(acc) {
                    *x += a * w;
                }
            }
        }
    }
    out
}

/// Query rows per tile of the prefill kernel (its PF_BQ).
pub const PREFILL_TILE_ROWS: usize = 16;

/// The prefill kernel's tiles for a batch: `[seq, first row, rows]` per tile, every
/// sequence's new rows cut into runs of at most [`PREFILL_TILE_ROWS`].
pub fn plan_prefill_tiles(query_start_loc: &[usize]) -> Vec<i32> {
    let mut tiles = Vec::new();
    for (seq, w) in query_start_loc.windows(2).enumerate() {
        let mut r = w[0];
        while r < w[1] {
            let n = (w[1] - r).min(PREFILL_TILE_ROWS);
            tiles.extend_from_slice(&[seq as i32, r as i32, n as i32]);
            r += n;
        }
    }
    tiles
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefill_tiles_cover_every_row_once_within_its_sequence() {
        // Sequences of 1, 16, 17, 40 and 3 new rows (decode rows become one-row tiles).
        let qsl = [0usize, 1, 17, 34, 74, 77];
        let tiles = super::plan_prefill_tiles(&qsl);
        let mut seen = vec![0u32; 77];
        for t in tiles.chunks(3) {
            let (seq, first, n) = (t[0] as usize, t[1] as usize, t[2] as usize);
            assert!(n >= 1 && n <= super::PREFILL_TILE_ROWS);
            assert!(first >= qsl[seq] && first + n <= qsl[seq + 1], "{t:?}");
            for r in first..first + n {
                seen[r] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        assert_eq!(tiles.len() / 3, 1 + 1 + 2 + 3 + 1);
    }

    use super::*;
    use crate::attention::{paged_attention_cpu, PagedAttentionShape, StepRows};

    #[test]
    fn launch_heuristic_matches_vllms_rule() {
        assert_eq!(choose_decode_launch(64, 32, 2048).num_partitions, 1); // big grid
        assert_eq!(choose_decode_launch(1, 32, 2048).num_partitions, 4); // small grid, long context
        assert_eq!(choose_decode_launch(1, 32, 300).num_partitions, 1); // one partition anyway
        let l = choose_decode_launch(64, 32, 16384); // too long for one pass
        assert_eq!((l.num_partitions, l.partition_size), (32, 512));
    }

    #[test]
    fn split_k_equals_one_pass_over_scattered_blocks() {
        let (ns, nh, nkv, hd, bs) = (3usize, 4usize, 2usize, 16usize, 16usize);
        let ctx = [1i32, 700, 1300];
        let max_blocks = 1300usize.div_ceil(bs);
        let num_blocks = ns * max_blocks + 5;
        let mut seed = 11;
        let q = crate::lcg::lcg_uniform(ns * nh * hd, &mut seed);
        let kc = crate::lcg::lcg_uniform(num_blocks * bs * nkv * hd, &mut seed);
        let vc = crate::lcg::lcg_uniform(num_blocks * bs * nkv * hd, &mut seed);
        // Sequence s gets blocks in a scrambled order from a shared pool.
        let mut tables = vec![0i32; ns * max_blocks];
        for s in 0..ns {
            for b in 0..max_blocks {
                tables[s * max_blocks + b] = ((b * ns + s) * 7 % num_blocks) as i32;
            }
        }
        // The plain CPU kernel on the same data (each sequence's one query is its last token).
        let shape = PagedAttentionShape::new(nh, nkv, hd, bs);
        let qsl: Vec<usize> = (0..=ns).collect();
        let cl: Vec<usize> = ctx.iter().map(|&c| c as usize).collect();
        let bt: Vec<Vec<u32>> = (0..ns)
            .map(|s| {
                tables[s * max_blocks..(s + 1) * max_blocks]
                    .iter()
                    .map(|&b| b as u32)
                    .collect()
            })
            .collect();
        let mut want = vec![0f32; ns * nh * hd];
        let step = StepRows {
            query_start_loc: &qsl,
            context_lens: &cl,
            prompt_lens: &[],
            block_tables: &bt,
        };
        paged_attention_cpu(shape, (&q, &kc, &vc), step, &mut want);
        for partition in [512usize, 256, 100, 1300] {
            let got = paged_decode_split_reference(
                &q, &kc, &vc, &tables, max_blocks, &ctx, nh, nkv, hd, bs, partition,
            );
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "partition {partition} element {i}: {a} vs {b}"
                );
            }
        }
    }
}
