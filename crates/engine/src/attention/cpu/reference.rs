//! The f32 reference paged attention (online softmax one block at a time), which the CUDA
//! kernels' checks and the GPU checks' CPU runner compare against. Each (token, head) is
//! computed by one thread in a fixed order, so a row's result never depends on the batch,
//! the chunking of its prompt or the thread count.

use rayon::prelude::*;

use crate::batch::FlatBatch;

/// Keys whose dot products run side by side in the reference.
const KEYS_AT_ONCE: usize = 8;

/// Heads and sizes of one paged attention call.
#[derive(Debug, Clone, Copy)]
pub struct PagedAttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub scale: f32,
    /// Sliding window: a query at position p sees keys p - window + 1 ..= p (`window` keys,
    /// itself included, as transformers and llama.cpp mask them); `None` sees all before it.
    pub window: Option<usize>,
}

impl PagedAttentionShape {
    /// The usual scale, 1 / sqrt(head_dim), and no window.
    pub fn new(num_heads: usize, num_kv_heads: usize, head_dim: usize, block_size: usize) -> Self {
        Self {
            num_heads,
            num_kv_heads,
            head_dim,
            block_size,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: None,
        }
    }

    /// With a layer's own scale and window.
    pub fn for_layer(self, layer: LayerAttention) -> Self {
        Self {
            scale: layer.scale.unwrap_or(self.scale),
            window: layer.window,
            ..self
        }
    }

    /// The first key a query at `pos` sees.
    pub fn first_key(&self, pos: usize) -> usize {
        self.window
            .map_or(0, |w| (pos + 1).saturating_sub(w.max(1)))
    }
}

/// What one layer's attention adds to the cache's geometry (Gemma 3: a scale from
/// `query_pre_attn_scalar`, sliding-window layers). The default is the usual scale, no window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LayerAttention {
    /// Softmax scale; `None`: 1 / sqrt(head_dim).
    pub scale: Option<f32>,
    pub window: Option<usize>,
}

/// A CPU kernel's query rows (`[num_tokens, num_heads, head_dim]`, f32) and its K and V
/// caches of element `T`.
pub type QueryKv<'a, T> = (&'a [f32], &'a [T], &'a [T]);

/// The step's rows as the CPU kernels read them (the fields of a [`FlatBatch`]).
#[derive(Debug, Clone, Copy)]
pub struct StepRows<'a> {
    /// Where each sequence's new tokens start in the flat rows; `num_seqs + 1` entries.
    pub query_start_loc: &'a [usize],
    /// Tokens in each sequence's KV after the step.
    pub context_lens: &'a [usize],
    /// Each sequence's prompt length (rows below it take llama.cpp's prompt order); may be
    /// empty (every row a decode row).
    pub prompt_lens: &'a [usize],
    pub block_tables: &'a [Vec<u32>],
}

impl<'a> StepRows<'a> {
    pub fn of(batch: &'a FlatBatch) -> Self {
        Self {
            query_start_loc: &batch.query_start_loc,
            context_lens: &batch.context_lens,
            prompt_lens: &batch.prompt_lens,
            block_tables: &batch.block_tables,
        }
    }

    /// Each flat row's sequence and position: a sequence's new tokens are the last of its
    /// context.
    pub fn positions(&self) -> Vec<(usize, usize)> {
        let qsl = self.query_start_loc;
        let mut rows = Vec::with_capacity(qsl.last().copied().unwrap_or(0));
        for (s, &ctx) in self.context_lens.iter().enumerate() {
            let (a, b) = (qsl[s], qsl[s + 1]);
            rows.extend((a..b).map(|row| (s, ctx - (b - a) + (row - a))));
        }
        rows
    }
}

/// The f32 reference paged attention (online softmax one block at a time): `q`, `out` are
/// `[num_tokens, num_heads, head_dim]`, the caches `[num_blocks, block_size, num_kv_heads,
/// head_dim]`.
#[allow(clippy::needless_range_loop)]
pub fn paged_attention_cpu(
    shape: PagedAttentionShape,
    (q, k_cache, v_cache): QueryKv<'_, f32>,
    step: StepRows<'_>,
    out: &mut [f32],
) {
    let rows = step.positions();
    let PagedAttentionShape {
        num_heads,
        num_kv_heads,
        head_dim: hd,
        block_size: bs,
        scale,
        ..
    } = shape;
    let group = num_heads / num_kv_heads;
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let row = idx / num_heads;
        let h = idx % num_heads;
        let kvh = h / group;
        let (s, pos) = rows[row];
        let qv = &q[idx * hd..(idx + 1) * hd];
        let table = &step.block_tables[s];
        let n_keys = pos + 1;
        let mut m = f32::NEG_INFINITY;
        let mut l = 0f32;
        let mut acc = vec![0f32; hd];
        let mut scores = [0f32; 256];
        let mut start = shape.first_key(pos);
        while start < n_keys {
            let block = table[start / bs] as usize;
            let len = (bs - start % bs).min(n_keys - start).min(scores.len());
            let mut bmax = f32::NEG_INFINITY;
            let key = |i: usize| {
                let off = ((block * bs + (start + i) % bs) * num_kv_heads + kvh) * hd;
                &k_cache[off..off + hd]
            };
            // Each key's dot is a sequential f32 sum over d: the order the goldens were
            // validated with (a lane-split sum changes greedy output on this sensitive model;
            // see the engine notes). Eight keys' sums run side by side: eight independent
            // chains instead of one, the same bits per key.
            let mut i = 0;
            while i + KEYS_AT_ONCE <= len {
                let ks: [&[f32]; KEYS_AT_ONCE] = std::array::from_fn(|j| key(i + j));
                let mut dots = [0f32; KEYS_AT_ONCE];
                for d in 0..hd {
                    let qd = qv[d];
                    for j in 0..KEYS_AT_ONCE {
                        dots[j] += qd * ks[j][d];
                    }
                }
                for j in 0..KEYS_AT_ONCE {
                    scores[i + j] = dots[j] * scale;
                    bmax = bmax.max(scores[i + j]);
                }
                i += KEYS_AT_ONCE;
            }
            for i in i..len {
                let kv = key(i);
                let mut dot = 0f32;
                for d in 0..hd {
                    dot += qv[d] * kv[d];
                }
                scores[i] = dot * scale;
                bmax = bmax.max(scores[i]);
            }
            let new_m = m.max(bmax);
            let correction = (m - new_m).exp();
            l *= correction;
            for a in acc.iter_mut() {
                *a *= correction;
            }
            for i in 0..len {
                let p = (scores[i] - new_m).exp();
                l += p;
                let off = ((block * bs + (start + i) % bs) * num_kv_heads + kvh) * hd;
                let vv = &v_cache[off..off + hd];
                for d in 0..hd {
                    acc[d] += p * vv[d];
                }
            }
            m = new_m;
            start += len;
        }
        let inv = 1.0 / l;
        for d in 0..hd {
            o[d] = acc[d] * inv;
        }
    });
}
