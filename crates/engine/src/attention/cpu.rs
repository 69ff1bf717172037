//! CPU paged attention in plain Rust, parallel over (token, KV head): the backend's kernel
//! ([`paged_attention_cpu_f16`], llama.cpp's arithmetic over an f16 cache) and the f32
//! reference ([`paged_attention_cpu`], which the CUDA kernels' tests use). Each (token, head)
//! is computed by one thread in a fixed order, so a row's result never depends on the batch,
//! the chunking of its prompt or the thread count.

use candle_core::{DType, Device, Storage, Tensor};
use half::f16;
use rayon::prelude::*;

use super::{AttentionBackend, KvCacheLayout};
use crate::batch::FlatBatch;
use crate::error::{EngineError, Result};
use crate::ggml_arith::f16_to_f32;

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
}

/// Each flat row's sequence and position: a sequence's new tokens are the last of its context.
fn row_positions(query_start_loc: &[usize], context_lens: &[usize]) -> Vec<(usize, usize)> {
    let mut rows = Vec::with_capacity(query_start_loc.last().copied().unwrap_or(0));
    for (s, &ctx) in context_lens.iter().enumerate() {
        let (a, b) = (query_start_loc[s], query_start_loc[s + 1]);
        rows.extend((a..b).map(|row| (s, ctx - (b - a) + (row - a))));
    }
    rows
}

/// The f32 reference paged attention (online softmax one block at a time): `q`, `out` are
/// `[num_tokens, num_heads, head_dim]`, the caches `[num_blocks, block_size, num_kv_heads,
/// head_dim]`.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub fn paged_attention_cpu(
    shape: PagedAttentionShape,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    query_start_loc: &[usize],
    context_lens: &[usize],
    block_tables: &[Vec<u32>],
    out: &mut [f32],
) {
    let PagedAttentionShape {
        num_heads,
        num_kv_heads,
        head_dim: hd,
        block_size: bs,
        scale,
    } = shape;
    let group = num_heads / num_kv_heads;
    let rows = row_positions(query_start_loc, context_lens);
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let row = idx / num_heads;
        let h = idx % num_heads;
        let kvh = h / group;
        let (s, pos) = rows[row];
        let qv = &q[idx * hd..(idx + 1) * hd];
        let table = &block_tables[s];
        let n_keys = pos + 1;
        let mut m = f32::NEG_INFINITY;
        let mut l = 0f32;
        let mut acc = vec![0f32; hd];
        let mut scores = [0f32; 256];
        let mut start = 0;
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

/// The CPU backend's attention, in llama.cpp's arithmetic (its default CPU build: f16 K and
/// V, flash attention off, single-token decode; see [`crate::ggml_arith`]) so that outputs
/// match llama.cpp's bit for bit: q rounded to f16; each score `ggml_vec_dot_f16`'s lanes
/// and tree, times `scale`; softmax with the AVX-512 `expf`, summed 16 keys at a time into a
/// double; probabilities rounded to f16; each output dim the f16 dot of the probabilities
/// with V over positions (lane = position % 64). The key and position orders are fixed, so a
/// row's result depends on nothing but its own context.
///
/// Prompt rows (positions below their sequence's `prompt_lens` entry, when that is 2 or
/// more) take llama.cpp's prompt-processing order instead: its f16 matmuls with two or more
/// columns go through llamafile's `tinyBLAS`, whose dot products use 16 lanes
/// ([`crate::ggml_arith::dot_f16_tiled`]), both for the scores and for the values.
///
/// K is stored transposed within each block (`k_t`: `[num_blocks, num_kv_heads, head_dim,
/// block_size]`, 8 keys' scores are vector lanes); V as `[num_blocks * block_size,
/// num_kv_heads, head_dim]`. One task computes all the query heads of a KV group for one
/// token (they share the K and V conversions) unless that leaves too few tasks.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_cpu_f16(
    shape: PagedAttentionShape,
    q: &[f32],
    k_t: &[f16],
    v_cache: &[f16],
    query_start_loc: &[usize],
    context_lens: &[usize],
    prompt_lens: &[usize],
    block_tables: &[Vec<u32>],
    out: &mut [f32],
) {
    let rows = q.len() / (shape.num_heads * shape.head_dim).max(1);
    let group = shape.num_heads / shape.num_kv_heads;
    let heads_per_task = if rows * shape.num_kv_heads >= 2 * rayon::current_num_threads() {
        group
    } else {
        1
    };
    attention_by_tasks(
        shape,
        heads_per_task,
        q,
        k_t,
        v_cache,
        query_start_loc,
        context_lens,
        prompt_lens,
        block_tables,
        out,
    )
}

#[allow(clippy::too_many_arguments)]
fn attention_by_tasks(
    shape: PagedAttentionShape,
    heads_per_task: usize,
    q: &[f32],
    k_t: &[f16],
    v_cache: &[f16],
    query_start_loc: &[usize],
    context_lens: &[usize],
    prompt_lens: &[usize],
    block_tables: &[Vec<u32>],
    out: &mut [f32],
) {
    let PagedAttentionShape {
        num_heads,
        num_kv_heads,
        head_dim: hd,
        ..
    } = shape;
    let group = num_heads / num_kv_heads;
    let rows = row_positions(query_start_loc, context_lens);
    out.par_chunks_mut(heads_per_task * hd)
        .enumerate()
        .for_each(|(task, o)| {
            let first = task * heads_per_task; // row * num_heads + head
            let (row, h0) = (first / num_heads, first % num_heads);
            let (s, pos) = rows[row];
            let prompt_len = prompt_lens.get(s).copied().unwrap_or(0);
            let keys = Keys {
                shape,
                k_t,
                v_cache,
                table: &block_tables[s],
                n_keys: pos + 1,
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
fn prompt_order(pos: usize, prompt_len: usize) -> bool {
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
        let Scratch {
            qh,
            p,
            kb,
            rows,
            tree,
        } = sc;
        // q as llama.cpp's matmul converts it to the K cache's type.
        let qh = sized(qh, q.len());
        qh.copy_from_slice(q);
        crate::ggml_arith::round_to_f16(qh);
        // Scores, then probabilities: [heads, n].
        let p = sized(p, heads * n);
        let kb = sized(kb, hd * bs);
        for (start, block, len) in self.segments() {
            f16_to_f32(&self.k_t[(block * nkv + kvh) * hd * bs..][..hd * bs], kb);
            for h in 0..heads {
                let out = &mut p[h * n + start..][..len];
                key_scores(&qh[h * hd..][..hd], kb, bs, len, out, self.prompt_order);
            }
        }
        for h in 0..heads {
            softmax_to_f16(&mut p[h * n..][..n], scale);
        }
        // Each position's V row in the cache.
        rows.clear();
        for (_, block, len) in self.segments() {
            rows.extend((0..len).map(|i| ((block * bs + i) * nkv + kvh) * hd));
        }
        let tree = sized(tree, 16 * hd);
        values_dot(p, rows, self.v_cache, self.prompt_order, tree, hd, out);
    }
}

/// Each head's output: for each dim `d`, the f16 dot product of the head's probabilities
/// (`p: [heads, n]`) with V's column `d` over the positions (V row of position `i` at
/// `v[rows[i]..]`) in `ggml_vec_dot_f16`'s order (lane = position % 64, `(a0 + a2) + (a1 +
/// a3)`, then [`crate::ggml_arith::reduce16`]) or, in prompt order, tinyBLAS's (lane =
/// position % 16, then the tree), into `out: [heads, hd]`. `tree` is `[16, hd]` scratch.
#[allow(clippy::too_many_arguments)]
fn values_dot(
    p: &[f32],
    rows: &[usize],
    v: &[f16],
    prompt: bool,
    tree: &mut [f32],
    hd: usize,
    out: &mut [f32],
) {
    let n = rows.len();
    // Checked once for all heads: every V row read below lies inside `v`.
    assert!(p.len() * hd == n * out.len() && rows.iter().all(|&r| r + hd <= v.len()));
    assert!(tree.len() >= 16 * hd);
    for (p, out) in p.chunks(n.max(1)).zip(out.chunks_mut(hd)) {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "f16c"
        ))]
        if hd.is_multiple_of(8) {
            for d0 in (0..hd).step_by(64) {
                // SAFETY: AVX2 and F16C are in the build's target; every V row read is
                // inside `v` (asserted above) and every store inside `tree`.
                unsafe {
                    match (hd - d0).min(64) / 8 {
                        8 => values_lanes_avx2::<8>(p, rows, v, d0, prompt, tree, hd),
                        4 => values_lanes_avx2::<4>(p, rows, v, d0, prompt, tree, hd),
                        w => {
                            for k in 0..w {
                                values_lanes_avx2::<1>(p, rows, v, d0 + 8 * k, prompt, tree, hd)
                            }
                        }
                    }
                }
            }
            tree_reduce(tree, out);
            continue;
        }
        let lanes = if prompt { 16 } else { 64 };
        for (d, o) in out.iter_mut().enumerate() {
            let mut acc = [0f32; 64];
            for (i, (&pv, &r)) in p.iter().zip(rows).enumerate() {
                acc[i % lanes] += v[r + d].to_f32() * pv;
            }
            *o = if prompt {
                crate::ggml_arith::reduce16(&std::array::from_fn(|l| acc[l]))
            } else {
                crate::ggml_arith::dot_f16_finish(&acc, std::iter::empty())
            };
        }
    }
}

/// The 16 values per dim that [`crate::ggml_arith::reduce16`]'s tree takes, for dims
/// `d0..d0 + 8 W`, into `tree[l][d]`: each lane's chain of positions held in W registers
/// (from its first product: llama.cpp's chains start from +0, which differs only in the sign
/// of an all-zero sum; a lane no position reaches is +0).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "f16c"
))]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn values_lanes_avx2<const W: usize>(
    p: &[f32],
    rows: &[usize],
    v: &[f16],
    d0: usize,
    prompt: bool,
    tree: &mut [f32],
    hd: usize,
) {
    use std::arch::x86_64::*;
    let n = p.len();
    let step = if prompt { 16 } else { 64 };
    let vp = v.as_ptr().add(d0);
    let chain = |lane: usize| -> [__m256; W] {
        let mut acc = [_mm256_setzero_ps(); W];
        let mut i = lane;
        let mut first = true;
        while i < n {
            let pv = _mm256_set1_ps(*p.get_unchecked(i));
            let row = vp.add(*rows.get_unchecked(i));
            for (w, a) in acc.iter_mut().enumerate() {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * w) as *const __m128i));
                let t = _mm256_mul_ps(x, pv);
                *a = if first { t } else { _mm256_add_ps(*a, t) };
            }
            first = false;
            i += step;
        }
        acc
    };
    let tp = tree.as_mut_ptr().add(d0);
    for l in 0..16 {
        let dst = tp.add(l * hd);
        if prompt {
            for (w, a) in chain(l).iter().enumerate() {
                _mm256_storeu_ps(dst.add(8 * w), *a);
            }
        } else {
            let (a0, a2) = (chain(l), chain(32 + l));
            for w in 0..W {
                _mm256_storeu_ps(dst.add(8 * w), _mm256_add_ps(a0[w], a2[w]));
            }
            let (a1, a3) = (chain(16 + l), chain(48 + l));
            for w in 0..W {
                let x = _mm256_loadu_ps(dst.add(8 * w));
                _mm256_storeu_ps(
                    dst.add(8 * w),
                    _mm256_add_ps(x, _mm256_add_ps(a1[w], a3[w])),
                );
            }
        }
    }
}

/// [`crate::ggml_arith::reduce16`] of `tree: [16, head_dim]` for every dim at once (vector
/// lanes over `d`): halves, then quarters, then pairs.
#[allow(dead_code)] // the portable build reduces per dim
fn tree_reduce(tree: &mut [f32], out: &mut [f32]) {
    let hd = out.len();
    for width in [8, 4] {
        for i in 0..width {
            let (lo, hi) = tree.split_at_mut((i + width) * hd);
            let (dst, src) = (&mut lo[i * hd..][..hd], &hi[..hd]);
            for d in 0..hd {
                dst[d] += src[d];
            }
        }
    }
    let t = |i: usize| &tree[i * hd..][..hd];
    let (t0, t1, t2, t3) = (t(0), t(1), t(2), t(3));
    for d in 0..hd {
        out[d] = (t0[d] + t2[d]) + (t1[d] + t3[d]);
    }
}

/// Per-thread buffers of [`Keys::attend`] (one task per (token, KV head) would otherwise
/// allocate them each time).
#[derive(Default)]
struct Scratch {
    qh: Vec<f32>,
    p: Vec<f32>,
    kb: Vec<f32>,
    rows: Vec<usize>,
    tree: Vec<f32>,
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

/// `out[j] = dot_f16(q, key j)` (or `dot_f16_tiled` in prompt order) for the `len` keys of
/// a block held as f32 `kb: [head_dim, block_size]`, unscaled; 8 keys per pass as vector
/// lanes when the head dimension is whole SIMD steps.
fn key_scores(q: &[f32], kb: &[f32], bs: usize, len: usize, out: &mut [f32], prompt: bool) {
    let hd = q.len();
    if bs.is_multiple_of(8) && hd.is_multiple_of(if prompt { 16 } else { 64 }) {
        for j in (0..len).step_by(8) {
            let lanes = if prompt {
                dot8::<true>(q, kb, bs, j)
            } else {
                dot8::<false>(q, kb, bs, j)
            };
            if j + 8 <= len {
                out[j..j + 8].copy_from_slice(&lanes);
            } else {
                out[j..len].copy_from_slice(&lanes[..len - j]);
            }
        }
    } else {
        let mut k = vec![0f32; hd];
        for (j, o) in out.iter_mut().enumerate().take(len) {
            for (d, kd) in k.iter_mut().enumerate() {
                *kd = kb[d * bs + j];
            }
            *o = if prompt {
                crate::ggml_arith::dot_f16_tiled(q, &k)
            } else {
                crate::ggml_arith::dot_f16(q, &k)
            };
        }
    }
}

type Lanes = [f32; 8];

#[inline(always)]
fn add(a: Lanes, b: Lanes) -> Lanes {
    std::array::from_fn(|x| a[x] + b[x])
}

/// [`crate::ggml_arith::dot_f16`] (`PROMPT`: `dot_f16_tiled`) of `q` with keys `j..j + 8`
/// of `kb` (each vector lane one key), for a head dimension of whole 64-wide (16) steps.
#[inline(always)]
fn dot8<const PROMPT: bool>(q: &[f32], kb: &[f32], bs: usize, j: usize) -> Lanes {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        let width = if PROMPT { 16 } else { 64 };
        assert!(q.len().is_multiple_of(width) && !q.is_empty());
        assert!(j + 8 <= bs && kb.len() >= q.len() * bs);
        // SAFETY: AVX2 is in the build's target; every load is inside `kb` / `q` (asserted).
        // The usual head dims get their chain lengths as constants (fully unrolled).
        return unsafe {
            match q.len() / width {
                1 => dot8_avx2::<PROMPT, 1>(q, kb, bs, j),
                2 => dot8_avx2::<PROMPT, 2>(q, kb, bs, j),
                4 => dot8_avx2::<PROMPT, 4>(q, kb, bs, j),
                8 => dot8_avx2::<PROMPT, 8>(q, kb, bs, j),
                _ => dot8_avx2::<PROMPT, 0>(q, kb, bs, j),
            }
        };
    }
    #[allow(unreachable_code)]
    dot8_portable::<PROMPT>(q, kb, bs, j)
}

/// [`dot8`] in AVX2 vectors (one key per lane; the same adds in the same order).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
unsafe fn dot8_avx2<const PROMPT: bool, const STEPS: usize>(
    q: &[f32],
    kb: &[f32],
    bs: usize,
    j: usize,
) -> Lanes {
    use std::arch::x86_64::*;
    let width = if PROMPT { 16 } else { 64 };
    // STEPS = 0: not a constant.
    let steps = if STEPS > 0 { STEPS } else { q.len() / width };
    let (qp, kp) = (q.as_ptr(), kb.as_ptr().add(j));
    // A lane's chain from its first product (llama.cpp's starts from +0: that differs only
    // in the sign of an all-zero sum, which no score can tell).
    #[inline(always)]
    unsafe fn lane(
        qp: *const f32,
        kp: *const f32,
        bs: usize,
        l: usize,
        width: usize,
        steps: usize,
    ) -> __m256 {
        let prod =
            |d: usize| _mm256_mul_ps(_mm256_set1_ps(*qp.add(d)), _mm256_loadu_ps(kp.add(d * bs)));
        let mut s = prod(l);
        for c in 1..steps {
            s = _mm256_add_ps(s, prod(width * c + l));
        }
        s
    }
    let mut sv = [_mm256_setzero_ps(); 16];
    for (l, sl) in sv.iter_mut().enumerate() {
        let lane = |x: usize| lane(qp, kp, bs, x, width, steps);
        *sl = if PROMPT {
            lane(l)
        } else {
            _mm256_add_ps(
                _mm256_add_ps(lane(l), lane(32 + l)),
                _mm256_add_ps(lane(16 + l), lane(48 + l)),
            )
        };
    }
    let t3: [__m256; 8] = std::array::from_fn(|i| _mm256_add_ps(sv[i + 8], sv[i]));
    let t6: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(t3[i + 4], t3[i]));
    let r = _mm256_add_ps(_mm256_add_ps(t6[0], t6[2]), _mm256_add_ps(t6[1], t6[3]));
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), r);
    out
}

#[inline(always)]
#[allow(dead_code)] // the portable build's path (its tests run it: -C target-cpu=x86-64)
fn dot8_portable<const PROMPT: bool>(q: &[f32], kb: &[f32], bs: usize, j: usize) -> Lanes {
    let width = if PROMPT { 16 } else { 64 };
    let steps = q.len() / width;
    // Lane l of llama.cpp's accumulators: the products of dims l, l + width, ... in order.
    let lane = |l: usize| -> Lanes {
        let mut s = [0f32; 8];
        for c in 0..steps {
            let d = width * c + l;
            let (qd, k) = (q[d], &kb[d * bs + j..][..8]);
            for x in 0..8 {
                s[x] += qd * k[x];
            }
        }
        s
    };
    // The 16 values the final tree reduces.
    let s = |l: usize| {
        if PROMPT {
            lane(l)
        } else {
            add(add(lane(l), lane(32 + l)), add(lane(16 + l), lane(48 + l)))
        }
    };
    let t3: [Lanes; 8] = std::array::from_fn(|i| add(s(i + 8), s(i)));
    let t6: [Lanes; 4] = std::array::from_fn(|i| add(t3[i + 4], t3[i]));
    add(add(t6[0], t6[2]), add(t6[1], t6[3]))
}

/// `ggml_soft_max` over one row of unscaled scores (scaled here), then the f16 rounding of
/// the probabilities that llama.cpp's next matmul applies.
fn softmax_to_f16(w: &mut [f32], scale: f32) {
    use crate::ggml_arith::{expf8, reduce16};
    let mut max = f32::NEG_INFINITY;
    for x in w.iter_mut() {
        *x *= scale;
        max = if max > *x { max } else { *x };
    }
    let mut sum = 0f64;
    for chunk in w.chunks_mut(16) {
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
    crate::ggml_arith::round_to_f16(w);
}

/// Paged KV cache in host memory, f16 as llama.cpp keeps it: K transposed within each
/// block, V row-major; attention by [`paged_attention_cpu_f16`].
pub struct CpuPagedAttention {
    layout: KvCacheLayout,
    num_heads: usize,
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

impl CpuPagedAttention {
    pub fn new(layout: KvCacheLayout, num_heads: usize) -> Self {
        let per_layer = layout.num_slots() * layout.num_kv_heads * layout.head_dim;
        Self {
            layout,
            num_heads,
            k: (0..layout.num_layers)
                .map(|_| vec![f16::ZERO; per_layer])
                .collect(),
            v: (0..layout.num_layers)
                .map(|_| vec![f16::ZERO; per_layer])
                .collect(),
        }
    }
}

/// An f32 paged KV cache with the f32 reference kernel ([`paged_attention_cpu`]): the CPU
/// reference the GPU checks compare against (llama.cpp's f16 arithmetic would put a
/// deliberate ~1e-3 between them).
pub struct CpuReferenceAttention {
    layout: KvCacheLayout,
    num_heads: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl CpuReferenceAttention {
    pub fn new(layout: KvCacheLayout, num_heads: usize) -> Self {
        let per_layer = layout.num_slots() * layout.num_kv_heads * layout.head_dim;
        let zeros = || {
            (0..layout.num_layers)
                .map(|_| vec![0f32; per_layer])
                .collect()
        };
        Self {
            layout,
            num_heads,
            k: zeros(),
            v: zeros(),
        }
    }
}

impl AttentionBackend for CpuReferenceAttention {
    fn write_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor, batch: &FlatBatch) -> Result<()> {
        check_slots(&self.layout, batch)?;
        let width = self.layout.num_kv_heads * self.layout.head_dim;
        for (cache, t) in [(&mut self.k[layer], k), (&mut self.v[layer], v)] {
            with_f32(t, |data| {
                for (row, &slot) in batch.slot_mapping.iter().enumerate() {
                    let s = slot as usize * width;
                    cache[s..s + width].copy_from_slice(&data[row * width..(row + 1) * width]);
                }
            })?;
        }
        Ok(())
    }

    fn attend(&self, layer: usize, q: &Tensor, batch: &FlatBatch) -> Result<Tensor> {
        attend_on_cpu(self.layout, self.num_heads, q, batch, |shape, q, out| {
            paged_attention_cpu(
                shape,
                q,
                &self.k[layer],
                &self.v[layer],
                &batch.query_start_loc,
                &batch.context_lens,
                &batch.block_tables,
                out,
            )
        })
    }

    fn layout(&self) -> KvCacheLayout {
        self.layout
    }
}

/// The step's slots all lie inside a cache of `layout`.
fn check_slots(layout: &KvCacheLayout, batch: &FlatBatch) -> Result<()> {
    let n_slots = layout.num_slots();
    match batch.slot_mapping.iter().find(|&&s| s as usize >= n_slots) {
        Some(slot) => Err(EngineError::Config(format!(
            "slot {slot} is outside the KV cache ({n_slots} slots)"
        ))),
        None => Ok(()),
    }
}

/// A CPU backend's `attend`: `kernel(shape, q, out)` over the step's rows, as a tensor of
/// `q`'s type `[num_tokens, num_heads * head_dim]`.
fn attend_on_cpu(
    layout: KvCacheLayout,
    num_heads: usize,
    q: &Tensor,
    batch: &FlatBatch,
    kernel: impl FnOnce(PagedAttentionShape, &[f32], &mut [f32]),
) -> Result<Tensor> {
    let shape = PagedAttentionShape {
        num_heads,
        num_kv_heads: layout.num_kv_heads,
        head_dim: layout.head_dim,
        block_size: layout.block_size,
        scale: 1.0 / (layout.head_dim as f32).sqrt(),
    };
    let n = batch.num_tokens();
    let mut out = vec![0f32; n * num_heads * layout.head_dim];
    with_f32(q, |qd| kernel(shape, qd, &mut out))?;
    Ok(
        Tensor::from_vec(out, (n, num_heads * layout.head_dim), &Device::Cpu)?
            .to_dtype(q.dtype())?,
    )
}

/// Runs `f` on a CPU f32 tensor's contiguous data.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = if t.dtype() == DType::F32 {
        t.contiguous()?
    } else {
        t.to_dtype(DType::F32)?.contiguous()?
    };
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let data = cpu.as_slice::<f32>()?;
            let (a, b) = layout
                .contiguous_offsets()
                .ok_or_else(|| EngineError::Config("tensor is not contiguous".into()))?;
            Ok(f(&data[a..b]))
        }
        _ => Err(EngineError::Config(
            "the CPU attention backend got a tensor that is not on the CPU".into(),
        )),
    }
}

impl AttentionBackend for CpuPagedAttention {
    fn write_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor, batch: &FlatBatch) -> Result<()> {
        check_slots(&self.layout, batch)?;
        let width = self.layout.num_kv_heads * self.layout.head_dim;
        let bs = self.layout.block_size;
        let kt = &mut self.k[layer];
        with_f32(k, |data| {
            // K transposed within its block: [block, kv head, d, slot in block].
            for (row, &slot) in batch.slot_mapping.iter().enumerate() {
                let (block, i) = (slot as usize / bs, slot as usize % bs);
                for (j, &x) in data[row * width..(row + 1) * width].iter().enumerate() {
                    kt[(block * width + j) * bs + i] = f16::from_f32(x);
                }
            }
        })?;
        let vc = &mut self.v[layer];
        with_f32(v, |data| {
            for (row, &slot) in batch.slot_mapping.iter().enumerate() {
                let s = slot as usize * width;
                for (dst, &x) in vc[s..s + width]
                    .iter_mut()
                    .zip(&data[row * width..(row + 1) * width])
                {
                    *dst = f16::from_f32(x);
                }
            }
        })?;
        Ok(())
    }

    fn attend(&self, layer: usize, q: &Tensor, batch: &FlatBatch) -> Result<Tensor> {
        attend_on_cpu(self.layout, self.num_heads, q, batch, |shape, q, out| {
            paged_attention_cpu_f16(
                shape,
                q,
                &self.k[layer],
                &self.v[layer],
                &batch.query_start_loc,
                &batch.context_lens,
                &batch.prompt_lens,
                &batch.block_tables,
                out,
            )
        })
    }

    fn layout(&self) -> KvCacheLayout {
        self.layout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense causal attention over contiguous K/V: the textbook formula.
    fn dense(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Vec<f32> {
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; n * nh * hd];
        for t in 0..n {
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let qv = &q[(t * nh + h) * hd..][..hd];
                let scores: Vec<f32> = (0..=t)
                    .map(|j| {
                        let kv = &k[(j * nkv + kvh) * hd..][..hd];
                        qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for j in 0..=t {
                    for d in 0..hd {
                        out[(t * nh + h) * hd + d] += e[j] / z * v[(j * nkv + kvh) * hd + d];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn paged_equals_dense_with_scattered_blocks_and_chunks() {
        let (nh, nkv, hd, bs) = (6, 2, 8, 4);
        let n = 11; // three blocks, last one partial
        let mut seed = 7;
        let q = crate::attention::lcg_uniform(n * nh * hd, &mut seed);
        let k = crate::attention::lcg_uniform(n * nkv * hd, &mut seed);
        let v = crate::attention::lcg_uniform(n * nkv * hd, &mut seed);
        let want = dense(&q, &k, &v, n, nh, nkv, hd);

        let layout = KvCacheLayout {
            num_layers: 1,
            num_blocks: 8,
            block_size: bs,
            num_kv_heads: nkv,
            head_dim: hd,
        };
        let table = vec![5u32, 1, 6];
        // The prompt in two chunks (7 then 4 tokens) must equal the dense result.
        let mut attn = CpuPagedAttention::new(layout, nh);
        let mut got = Vec::new();
        for (start, end) in [(0usize, 7usize), (7, 11)] {
            let mut b = FlatBatch::default();
            b.push_seq(
                &vec![0; end - start],
                start,
                &table,
                bs,
                crate::batch::LogitsWanted::Last,
            );
            let kt = Tensor::from_slice(
                &k[start * nkv * hd..end * nkv * hd],
                (end - start, nkv * hd),
                &Device::Cpu,
            )
            .unwrap();
            let vt = Tensor::from_slice(
                &v[start * nkv * hd..end * nkv * hd],
                (end - start, nkv * hd),
                &Device::Cpu,
            )
            .unwrap();
            let qt = Tensor::from_slice(
                &q[start * nh * hd..end * nh * hd],
                (end - start, nh * hd),
                &Device::Cpu,
            )
            .unwrap();
            attn.write_kv(0, &kt, &vt, &b).unwrap();
            let o = attn.attend(0, &qt, &b).unwrap();
            got.extend(o.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        // f16 K, V and probabilities: within a few f16 ulp of the f32 formula.
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 4e-3 * (1.0 + b.abs()),
                "element {i}: {a} vs {b}"
            );
        }
    }

    /// llama.cpp's attention for one (row, head) written the plain way (every step of
    /// `ggml_vec_dot_f16`, `ggml_soft_max` and the f16 roundings, over the positions in
    /// order): the fast kernel must give the same bits.
    fn ggml_reference(
        q: &[f32],
        keys: &[Vec<f32>],
        values: &[Vec<f32>],
        scale: f32,
        prompt_order: bool,
    ) -> Vec<f32> {
        use crate::ggml_arith::{dot_f16_tiled, expf, reduce16};
        let dot_f16 = |x: &[f32], y: &[f32]| {
            if prompt_order {
                dot_f16_tiled(x, y)
            } else {
                crate::ggml_arith::dot_f16(x, y)
            }
        };
        let r = |x: f32| f16::from_f32(x).to_f32();
        let qh: Vec<f32> = q.iter().map(|&x| r(x)).collect();
        let kh: Vec<Vec<f32>> = keys
            .iter()
            .map(|k| k.iter().map(|&x| r(x)).collect())
            .collect();
        let w: Vec<f32> = kh.iter().map(|k| dot_f16(k, &qh) * scale).collect();
        let max = w.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        // Padded to whole 64-wide steps with masked keys (probability 0), as llama.cpp's
        // KV cache is.
        let n_kv = w.len().div_ceil(64) * 64;
        let mut e: Vec<f32> = w.iter().map(|&x| expf(x - max)).collect();
        e.resize(n_kv, 0.0);
        let sum: f64 = e
            .chunks(16)
            .map(|c| reduce16(&std::array::from_fn(|i| c[i])) as f64)
            .sum();
        let inv = (1.0 / sum) as f32;
        let p: Vec<f32> = e.iter().map(|&x| r(x * inv)).collect();
        (0..q.len())
            .map(|d| {
                let mut col: Vec<f32> = values.iter().map(|v| r(v[d])).collect();
                col.resize(n_kv, 0.0);
                dot_f16(&col, &p)
            })
            .collect()
    }

    /// The paged kernel is llama.cpp's arithmetic: the same bits as [`ggml_reference`] for
    /// decode rows and chunked prompts in both orders, one head or a whole group per task,
    /// several block sizes, a head dim of two 64-wide steps and one with a tail.
    #[test]
    fn f16_attention_equals_llama_cpps_arithmetic_bit_for_bit() {
        for (nh, nkv, hd, bs) in [
            (9, 3, 64, 16),
            (8, 2, 128, 8),
            (6, 6, 16, 4),
            (12, 2, 80, 32),
            (4, 2, 12, 4), // no whole SIMD steps: the scalar paths
        ] {
            let num_blocks = 24;
            let mut seed = 11;
            let k = crate::attention::lcg_uniform(num_blocks * bs * nkv * hd, &mut seed);
            let v = crate::attention::lcg_uniform(num_blocks * bs * nkv * hd, &mut seed);
            let mut k_t = vec![f16::ZERO; k.len()];
            for b in 0..num_blocks {
                for i in 0..bs {
                    for h in 0..nkv {
                        for d in 0..hd {
                            k_t[((b * nkv + h) * hd + d) * bs + i] =
                                f16::from_f32(k[((b * bs + i) * nkv + h) * hd + d]);
                        }
                    }
                }
            }
            let v16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            // Three sequences: a 5-token chunk of a longer prompt, one decode row deep in
            // its context (past 64 positions), a 2-token chunk from position 0.
            let tables: Vec<Vec<u32>> =
                vec![(0..8).rev().collect(), (8..20).collect(), vec![23, 21]];
            let context_lens = vec![(5 * bs / 2).min(8 * bs), 11 * bs + 3, 2];
            let qsl = vec![0, 5, 6, 8];
            // The first sequence's chunk straddles the end of its prompt (prompt order, then
            // decode order); the second is a decode row; the third all prompt.
            let prompt_lens = vec![context_lens[0] - 2, 4 * bs, 2];
            let shape = PagedAttentionShape {
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
                block_size: bs,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let q: Vec<f32> = crate::attention::lcg_uniform(8 * nh * hd, &mut seed)
                .iter()
                .map(|x| x * 4.0)
                .collect();
            let rows = row_positions(&qsl, &context_lens);
            let mut want = vec![0f32; q.len()];
            for (row, &(s, pos)) in rows.iter().enumerate() {
                for h in 0..nh {
                    let kvh = h / (nh / nkv);
                    let slot = |p: usize| tables[s][p / bs] as usize * bs + p % bs;
                    let at = |c: &[f32], p: usize| c[(slot(p) * nkv + kvh) * hd..][..hd].to_vec();
                    let keys: Vec<Vec<f32>> = (0..=pos).map(|p| at(&k, p)).collect();
                    let values: Vec<Vec<f32>> = (0..=pos).map(|p| at(&v, p)).collect();
                    let prompt_order = pos < prompt_lens[s] && hd % 16 == 0 && prompt_lens[s] > 1;
                    let q = &q[(row * nh + h) * hd..][..hd];
                    let o = ggml_reference(q, &keys, &values, shape.scale, prompt_order);
                    want[(row * nh + h) * hd..][..hd].copy_from_slice(&o);
                }
            }
            for heads_per_task in [1, nh / nkv] {
                let mut got = vec![0f32; q.len()];
                attention_by_tasks(
                    shape,
                    heads_per_task,
                    &q,
                    &k_t,
                    &v16,
                    &qsl,
                    &context_lens,
                    &prompt_lens,
                    &tables,
                    &mut got,
                );
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "shape {nh}/{nkv}/{hd}/{bs}, {heads_per_task} heads per task, element {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_alone_in_a_llama_cpp_ubatch_take_the_decode_order() {
        assert!(prompt_order(0, 5) && prompt_order(4, 5) && !prompt_order(5, 5));
        assert!(!prompt_order(0, 1), "a one-token prompt is a decode step");
        assert!(prompt_order(511, 513) && !prompt_order(512, 513));
        assert!(prompt_order(512, 514) && prompt_order(513, 514));
    }

    #[test]
    fn reference_backend_equals_dense_attention() {
        let (nh, nkv, hd, bs) = (6, 2, 8, 4);
        let n = 11;
        let mut seed = 3;
        let q = crate::attention::lcg_uniform(n * nh * hd, &mut seed);
        let k = crate::attention::lcg_uniform(n * nkv * hd, &mut seed);
        let v = crate::attention::lcg_uniform(n * nkv * hd, &mut seed);
        let want = dense(&q, &k, &v, n, nh, nkv, hd);
        let layout = KvCacheLayout {
            num_layers: 1,
            num_blocks: 4,
            block_size: bs,
            num_kv_heads: nkv,
            head_dim: hd,
        };
        let mut attn = CpuReferenceAttention::new(layout, nh);
        let mut b = FlatBatch::default();
        b.push_seq(
            &vec![0; n],
            0,
            &[3, 0, 2],
            bs,
            crate::batch::LogitsWanted::Last,
        );
        let t = |x: &[f32], w: usize| Tensor::from_slice(x, (n, w), &Device::Cpu).unwrap();
        attn.write_kv(0, &t(&k, nkv * hd), &t(&v, nkv * hd), &b)
            .unwrap();
        let got: Vec<f32> = attn
            .attend(0, &t(&q, nh * hd), &b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn slot_outside_the_cache_is_an_error() {
        let layout = KvCacheLayout {
            num_layers: 1,
            num_blocks: 1,
            block_size: 4,
            num_kv_heads: 1,
            head_dim: 2,
        };
        let mut attn = CpuPagedAttention::new(layout, 1);
        let mut b = FlatBatch::default();
        b.push_seq(&[1], 0, &[3], 4, crate::batch::LogitsWanted::Last);
        let t = Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(attn.write_kv(0, &t, &t, &b).is_err());
    }
}
