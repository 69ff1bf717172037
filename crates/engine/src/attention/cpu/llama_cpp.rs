//! The CPU backend's kernel: paged attention in llama.cpp's arithmetic over an f16 cache,
//! parallel over (token, KV head). The SIMD lanes of its dot products live in `lanes.rs`.

use half::f16;
use rayon::prelude::*;

use super::lanes::*;
use super::reference::{PagedAttentionShape, QueryKv, StepRows};

/// The CPU backend's attention, in llama.cpp's arithmetic (its default CPU build: f16 K and
/// V, flash attention off, single-token decode; see [`crate::ops::ggml_arith`]) so that outputs
/// match llama.cpp's bit for bit: q rounded to f16; each score `ggml_vec_dot_f16`'s lanes
/// and tree, times `scale`; softmax with the AVX-512 `expf`, summed 16 keys at a time into a
/// double; probabilities rounded to f16; each output dim the f16 dot of the probabilities
/// with V over positions (lane = position % 64). The key and position orders are fixed, so a
/// row's result depends on nothing but its own context.
///
/// Prompt rows (positions below their sequence's `prompt_lens` entry, when that is 2 or
/// more) take llama.cpp's prompt-processing order instead: its f16 matmuls with two or more
/// columns go through llamafile's `tinyBLAS`, whose dot products use 16 lanes
/// ([`crate::ops::ggml_arith::dot_f16_tiled`]), both for the scores and for the values.
///
/// K is stored transposed within each block (`k_t`: `[num_blocks, num_kv_heads, head_dim,
/// block_size]`, 8 keys' scores are vector lanes); V as `[num_blocks * block_size,
/// num_kv_heads, head_dim]`. One task computes all the query heads of a KV group for one
/// token (they share the K and V conversions) unless that leaves too few tasks.
pub fn paged_attention_cpu_f16(
    shape: PagedAttentionShape,
    (q, k_t, v_cache): QueryKv<'_, f16>,
    step: StepRows<'_>,
    out: &mut [f32],
) {
    let rows = q.len() / (shape.num_heads * shape.head_dim).max(1);
    let group = shape.num_heads / shape.num_kv_heads;
    let heads_per_task = if rows * shape.num_kv_heads >= 2 * rayon::current_num_threads() {
        group
    } else {
        1
    };
    attention_by_tasks(shape, heads_per_task, (q, k_t, v_cache), step, out)
}

/// The kernel with `heads_per_task` query heads of one KV group per task (1 or the group).
pub(super) fn attention_by_tasks(
    shape: PagedAttentionShape,
    heads_per_task: usize,
    (q, k_t, v_cache): QueryKv<'_, f16>,
    step: StepRows<'_>,
    out: &mut [f32],
) {
    let (num_heads, hd) = (shape.num_heads, shape.head_dim);
    let group = num_heads / shape.num_kv_heads;
    let rows = step.positions();
    out.par_chunks_mut(heads_per_task * hd)
        .enumerate()
        .for_each(|(task, o)| {
            let first = task * heads_per_task; // row * num_heads + head
            let (row, h0) = (first / num_heads, first % num_heads);
            let (s, pos) = rows[row];
            let prompt_len = step.prompt_lens.get(s).copied().unwrap_or(0);
            let keys = Keys {
                shape,
                k_t,
                v_cache,
                table: &step.block_tables[s],
                n_keys: pos + 1,
                first_key: shape.first_key(pos),
                kvh: h0 / group,
                prompt_order: prompt_order(pos, prompt_len) && hd.is_multiple_of(16),
            };
            keys.attend(&q[first * hd..(first + heads_per_task) * hd], o);
        });
}

/// llama.cpp's ubatch: a prompt is processed 512 tokens at a time.
const LLAMA_CPP_UBATCH: usize = 512;

/// Whether llama.cpp computes the row at `pos` of a sequence with a `prompt_len`-token prompt
/// in its prompt-processing order: a prompt row, unless it is alone in its ubatch (a
/// one-token prompt, or the last row of a prompt one longer than a multiple of 512), which
/// llama.cpp computes as a decode step.
pub(super) fn prompt_order(pos: usize, prompt_len: usize) -> bool {
    let alone = prompt_len % LLAMA_CPP_UBATCH == 1 && pos + 1 == prompt_len;
    pos < prompt_len && !alone
}

/// One token's keys and values for one KV head.
struct Keys<'a> {
    shape: PagedAttentionShape,
    k_t: &'a [f16],
    v_cache: &'a [f16],
    table: &'a [u32],
    n_keys: usize,
    /// Keys before it are outside the sliding window: masked as llama.cpp masks them (their
    /// scores -inf, so their probabilities are exactly 0 in the same lanes).
    first_key: usize,
    kvh: usize,
    /// llama.cpp's prompt-processing order (16 lanes) rather than its decode order (64).
    prompt_order: bool,
}

impl Keys<'_> {
    /// The segments of the context that lie in one block: (first position, block id, len).
    fn segments(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let bs = self.shape.block_size;
        (0..self.n_keys).step_by(bs).map(move |start| {
            (
                start,
                self.table[start / bs] as usize,
                bs.min(self.n_keys - start),
            )
        })
    }

    /// Asks for this task's K blocks and V rows ahead of use: the blocks lie wherever the
    /// block table puts them, so the hardware prefetcher finds each one only after a miss.
    fn prefetch(&self, v_rows: &[usize]) {
        #[cfg(x86_v3)]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let (nkv, hd, bs) = (
                self.shape.num_kv_heads,
                self.shape.head_dim,
                self.shape.block_size,
            );
            // f16 elements per 64-byte line.
            const LINE: usize = 32;
            for (_, block, _) in self.segments() {
                let kb = &self.k_t[(block * nkv + self.kvh) * hd * bs..][..hd * bs];
                for i in (0..kb.len()).step_by(LINE) {
                    // SAFETY: a prefetch reads nothing the program sees; the address is in `kb`.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(kb.as_ptr().add(i).cast()) };
                }
            }
            for &r in v_rows {
                let row = &self.v_cache[r..][..hd];
                for i in (0..hd).step_by(LINE) {
                    // SAFETY: as above; the address is in the V row.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(i).cast()) };
                }
            }
        }
        #[cfg(not(x86_v3))]
        let _ = v_rows;
    }

    /// Query heads of this KV head: `q`, `out` are `[heads, head_dim]`.
    fn attend(&self, q: &[f32], out: &mut [f32]) {
        SCRATCH.with(|s| self.attend_with(q, out, &mut s.borrow_mut()))
    }

    fn attend_with(&self, q: &[f32], out: &mut [f32], sc: &mut Scratch) {
        let PagedAttentionShape {
            num_kv_heads: nkv,
            head_dim: hd,
            block_size: bs,
            scale,
            ..
        } = self.shape;
        let (n, kvh) = (self.n_keys, self.kvh);
        let heads = q.len() / hd;
        let Scratch { qh, p, rows } = sc;
        // Each position's V row in the cache.
        rows.clear();
        for (_, block, len) in self.segments() {
            rows.extend((0..len).map(|i| ((block * bs + i) * nkv + kvh) * hd));
        }
        self.prefetch(rows);
        // q as llama.cpp's matmul converts it to the K cache's type.
        let qh = sized(qh, q.len());
        qh.copy_from_slice(q);
        crate::ops::ggml_arith::round_to_f16(qh);
        // Scores, then probabilities: [heads, n].
        let p = sized(p, heads * n);
        for (start, block, len) in self.segments() {
            let kb = &self.k_t[(block * nkv + kvh) * hd * bs..][..hd * bs];
            key_scores(qh, hd, (kb, bs), p, (n, start, len), self.prompt_order);
        }
        for h in 0..heads {
            p[h * n..][..self.first_key].fill(f32::NEG_INFINITY);
            softmax_to_f16(&mut p[h * n..][..n], scale);
        }
        values_dot(p, rows, self.v_cache, self.prompt_order, hd, out);
    }
}

/// Each head's output: for each dim `d`, the f16 dot product of the head's probabilities
/// (`p: [heads, n]`) with V's column `d` over the positions (V row of position `i` at
/// `v[rows[i]..]`) in `ggml_vec_dot_f16`'s order (lane = position % 64, `(a0 + a2) + (a1 +
/// a3)`, then [`crate::ops::ggml_arith::reduce16`]) or, in prompt order, tinyBLAS's (lane =
/// position % 16, then the tree), into `out: [heads, hd]`.
fn values_dot(p: &[f32], rows: &[usize], v: &[f16], prompt: bool, hd: usize, out: &mut [f32]) {
    let n = rows.len();
    // Checked once for all heads: every V row read below lies inside `v`.
    assert!(p.len() * hd == n * out.len() && rows.iter().all(|&r| r + hd <= v.len()));
    #[cfg(x86_v3)]
    if hd.is_multiple_of(8) && hd > 0 {
        let heads = out.len() / hd;
        for h0 in (0..heads).step_by(MAX_HEADS) {
            let h1 = (h0 + MAX_HEADS).min(heads);
            let ph = &p[h0 * n..h1 * n];
            let oh = &mut out[h0 * hd..h1 * hd];
            // Dims per pass: in prompt order (a lane's chain is one tree input) 64 for one
            // head, 32 for two to four (four heads in two 16-wide calls); in decode order a
            // tree input sums four chains, so passes are half as wide. Accumulators,
            // broadcasts and one V vector then fit in the 16 registers (or nearly).
            let heads = h1 - h0;
            let span = match (heads, prompt) {
                (1, true) => 64,
                (_, true) | (1, false) => 32,
                (2 | 3, false) => 16,
                _ => 8,
            };
            for d0 in (0..hd).step_by(span) {
                let d1 = (d0 + span).min(hd);
                let args = (ph, rows, v, (d0, d1), prompt, &mut *oh, hd);
                // SAFETY: AVX2, FMA and F16C are in the build's target; every V row read is
                // inside `v` (asserted above), every probability inside `ph` ([heads, n]) and
                // every store inside `oh` ([heads, hd]).
                unsafe {
                    match (heads, d1 - d0 == span, span) {
                        (1, true, 64) => values_in_lanes::<1, 8>(args),
                        (1, true, _) => values_in_lanes::<1, 4>(args),
                        (2, true, 32) => values_in_lanes::<2, 4>(args),
                        (3, true, 32) => values_in_lanes::<3, 4>(args),
                        (4.., true, 32) => values_in_lanes::<4, 2>(args),
                        (2, true, _) => values_in_lanes::<2, 2>(args),
                        (3, true, _) => values_in_lanes::<3, 2>(args),
                        (1, ..) => values_in_lanes::<1, 1>(args),
                        (2, ..) => values_in_lanes::<2, 1>(args),
                        (3, ..) => values_in_lanes::<3, 1>(args),
                        _ => values_in_lanes::<4, 1>(args),
                    }
                }
            }
        }
        return;
    }
    let lanes = if prompt { 16 } else { 64 };
    for (p, out) in p.chunks(n.max(1)).zip(out.chunks_mut(hd.max(1))) {
        for (d, o) in out.iter_mut().enumerate() {
            let mut acc = [0f32; 64];
            for (i, (&pv, &r)) in p.iter().zip(rows).enumerate() {
                acc[i % lanes] += v[r + d].to_f32() * pv;
            }
            *o = if prompt {
                crate::ops::ggml_arith::reduce16(&std::array::from_fn(|l| acc[l]))
            } else {
                crate::ops::ggml_arith::dot_f16_finish(&acc, std::iter::empty())
            };
        }
    }
}

/// [`values_lanes_avx2`] over `H` heads' probabilities for dims `d0..d1`, `8 W` at a time.
#[cfg(x86_v3)]
#[inline(always)]
unsafe fn values_in_lanes<const H: usize, const W: usize>(
    (p, rows, v, (d0, d1), prompt, out, hd): ValueLanes<'_>,
) {
    // What the unchecked reads and writes below rely on.
    assert!((d1 - d0) % (8 * W) == 0 && d1 <= hd);
    assert!(p.len() == H * rows.len() && out.len() == H * hd);
    for d in (d0..d1).step_by(8 * W) {
        values_lanes_avx2::<H, W>(p, rows, v, d, prompt, out, hd);
    }
}

/// What [`values_in_lanes`] reads and writes: probabilities `[H, n]`, V rows, the V cache, a
/// range of dims, the order, the outputs `[H, hd]` and the head dim.
#[cfg(x86_v3)]
type ValueLanes<'a> = (
    &'a [f32],
    &'a [usize],
    &'a [f16],
    (usize, usize),
    bool,
    &'a mut [f32],
    usize,
);

/// Per-thread buffers of [`Keys::attend`] (one task per (token, KV head) would otherwise
/// allocate them each time).
#[derive(Default)]
struct Scratch {
    qh: Vec<f32>,
    p: Vec<f32>,
    rows: Vec<usize>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The first `n` elements of `v`, grown as needed (contents unspecified).
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// `ggml_soft_max` over one row of unscaled scores (scaled here), then the f16 rounding of
/// the probabilities that llama.cpp's next matmul applies.
fn softmax_to_f16(w: &mut [f32], scale: f32) {
    use crate::ops::ggml_arith::{expf8, reduce16};
    let max = scale_and_max(w, scale);
    let mut sum = 0f64;
    // Whole chunks of 16 in AVX2 vectors, the rest (or everything, without AVX2) below.
    #[cfg(x86_v3)]
    let whole = w.len() / 16 * 16;
    #[cfg(not(x86_v3))]
    let whole = 0;
    #[cfg(x86_v3)]
    // SAFETY: AVX2 and FMA are in the build's target; loads and stores stay inside `w`.
    unsafe {
        use crate::ops::ggml_arith::expf8_avx2;
        use std::arch::x86_64::*;
        let m = _mm256_set1_ps(max);
        for chunk in w[..whole].chunks_exact_mut(16) {
            let at = chunk.as_mut_ptr();
            let lo = expf8_avx2(_mm256_sub_ps(_mm256_loadu_ps(at), m));
            let hi = expf8_avx2(_mm256_sub_ps(_mm256_loadu_ps(at.add(8)), m));
            _mm256_storeu_ps(at, lo);
            _mm256_storeu_ps(at.add(8), hi);
            // reduce16: the halves (t3), their halves (t6), then (t6[0] + t6[2]) + (t6[1] + t6[3]).
            let t3 = _mm256_add_ps(hi, lo);
            let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
            let t = _mm_add_ps(t6, _mm_movehl_ps(t6, t6)); // [t6[0] + t6[2], t6[1] + t6[3], ..]
            sum += _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t))) as f64;
        }
    }
    for chunk in w[whole..].chunks_mut(16) {
        // Past the row, llama.cpp's padded cache holds masked keys: exp(-inf) = 0.
        let x: [f32; 16] =
            std::array::from_fn(|i| chunk.get(i).map_or(f32::NEG_INFINITY, |x| x - max));
        let mut e = [0f32; 16];
        for half in 0..2 {
            let x: [f32; 8] = std::array::from_fn(|i| x[8 * half + i]);
            e[8 * half..8 * half + 8].copy_from_slice(&expf8(x));
        }
        chunk.copy_from_slice(&e[..chunk.len()]);
        sum += reduce16(&e) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for x in w.iter_mut() {
        *x *= inv;
    }
    crate::ops::ggml_arith::round_to_f16(w);
}

/// Scales `w` in place and returns its maximum (the order of a max does not matter).
fn scale_and_max(w: &mut [f32], scale: f32) -> f32 {
    let mut max = f32::NEG_INFINITY;
    #[allow(unused_mut)] // advanced only by the AVX2 loop
    let mut i = 0;
    #[cfg(x86_v3)]
    // SAFETY: AVX2 is in the build's target; loads and stores stay inside `w`.
    unsafe {
        use std::arch::x86_64::*;
        let (s, mut m) = (_mm256_set1_ps(scale), _mm256_set1_ps(f32::NEG_INFINITY));
        while i + 8 <= w.len() {
            let x = _mm256_mul_ps(_mm256_loadu_ps(w.as_ptr().add(i)), s);
            _mm256_storeu_ps(w.as_mut_ptr().add(i), x);
            m = _mm256_max_ps(m, x);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        max = lanes.iter().fold(max, |a, &b| if a > b { a } else { b });
    }
    for x in &mut w[i..] {
        *x *= scale;
        max = if max > *x { max } else { *x };
    }
    max
}
