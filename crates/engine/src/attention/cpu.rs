//! CPU paged attention in plain Rust: parallel over (token, head), f32 accumulation,
//! online softmax one KV block at a time. Each (token, head) is computed by one thread in
//! a fixed key order, so a row's result never depends on the batch, the chunking of its
//! prompt or the thread count.

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use super::{AttentionBackend, KvCacheLayout};
use crate::batch::FlatBatch;
use crate::error::{EngineError, Result};

/// Keys whose dot products run side by side in the CPU kernel.
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

/// The reference paged attention: `q`, `out` are `[num_tokens, num_heads, head_dim]`,
/// the caches `[num_blocks, block_size, num_kv_heads, head_dim]`.
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

/// The CPU backend's attention: [`paged_attention_cpu`]'s arithmetic, operation for
/// operation (so the same bits), laid out for speed. K is stored transposed within each block
/// (`k_t`: `[num_blocks, num_kv_heads, head_dim, block_size]`), so the scores of up to 16 keys
/// are vector lanes, each lane still a sequential sum over `d`; and one task computes all the
/// query heads of a KV group for one token (they share every K and V read, and their sums are
/// independent chains) unless that leaves too few tasks for the threads.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_cpu_grouped(
    shape: PagedAttentionShape,
    q: &[f32],
    k_t: &[f32],
    v_cache: &[f32],
    query_start_loc: &[usize],
    context_lens: &[usize],
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
        block_tables,
        out,
    )
}

#[allow(clippy::too_many_arguments)]
fn attention_by_tasks(
    shape: PagedAttentionShape,
    heads_per_task: usize,
    q: &[f32],
    k_t: &[f32],
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
            let keys = Keys {
                shape,
                k_t,
                v_cache,
                table: &block_tables[s],
                n_keys: pos + 1,
                kvh: h0 / group,
            };
            let q = &q[first * hd..(first + heads_per_task) * hd];
            // Up to four heads at a time (their sums stay in registers).
            for (qs, os) in q.chunks(4 * hd).zip(o.chunks_mut(4 * hd)) {
                match os.len() / hd {
                    1 => keys.attend::<1>(qs, os),
                    2 => keys.attend::<2>(qs, os),
                    3 => keys.attend::<3>(qs, os),
                    _ => keys.attend::<4>(qs, os),
                }
            }
        });
}

/// One token's keys and values for one KV head.
struct Keys<'a> {
    shape: PagedAttentionShape,
    k_t: &'a [f32],
    v_cache: &'a [f32],
    table: &'a [u32],
    n_keys: usize,
    kvh: usize,
}

impl Keys<'_> {
    /// H query heads of this KV head: `q`, `out` are `[H, head_dim]`.
    #[allow(clippy::needless_range_loop)] // heads index several parallel arrays
    fn attend<const H: usize>(&self, q: &[f32], out: &mut [f32]) {
        let PagedAttentionShape {
            num_kv_heads: nkv,
            head_dim: hd,
            block_size: bs,
            scale,
            ..
        } = self.shape;
        let kvh = self.kvh;
        let qh: [&[f32]; H] = std::array::from_fn(|h| &q[h * hd..(h + 1) * hd]);
        let mut m = [f32::NEG_INFINITY; H];
        let mut l = [0f32; H];
        let mut acc = vec![0f32; H * hd];
        let mut scores = [[0f32; 256]; H];
        let mut start = 0;
        while start < self.n_keys {
            let block = self.table[start / bs] as usize;
            let first = start % bs;
            let len = (bs - first).min(self.n_keys - start).min(256);
            // This block's keys for this KV head: [head_dim, block_size].
            let kt = &self.k_t[(block * nkv + kvh) * hd * bs..][..hd * bs];
            let mut bmax = [f32::NEG_INFINITY; H];
            if bs % 16 == 0 {
                self.scores::<H, 16>(&qh, kt, first, len, &mut scores, &mut bmax, scale);
            } else if bs % 8 == 0 {
                self.scores::<H, 8>(&qh, kt, first, len, &mut scores, &mut bmax, scale);
            } else {
                self.scores::<H, 1>(&qh, kt, first, len, &mut scores, &mut bmax, scale);
            }
            let mut new_m = [0f32; H];
            for h in 0..H {
                new_m[h] = m[h].max(bmax[h]);
                let correction = (m[h] - new_m[h]).exp();
                l[h] *= correction;
                for a in acc[h * hd..(h + 1) * hd].iter_mut() {
                    *a *= correction;
                }
            }
            for i in 0..len {
                let off = ((block * bs + (start + i) % bs) * nkv + kvh) * hd;
                let vv = &self.v_cache[off..off + hd];
                for h in 0..H {
                    let p = (scores[h][i] - new_m[h]).exp();
                    l[h] += p;
                    let a = &mut acc[h * hd..(h + 1) * hd];
                    for d in 0..hd {
                        a[d] += p * vv[d];
                    }
                }
            }
            m = new_m;
            start += len;
        }
        for h in 0..H {
            let inv = 1.0 / l[h];
            for d in 0..hd {
                out[h * hd + d] = acc[h * hd + d] * inv;
            }
        }
    }

    /// Scores of keys `first..first + len` of a block, W keys per pass: lane j of head h is
    /// `sum_d q[h][d] * k[j][d]` added in d order (mul, then add: the reference's rounding).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn scores<const H: usize, const W: usize>(
        &self,
        qh: &[&[f32]; H],
        kt: &[f32],
        first: usize,
        len: usize,
        scores: &mut [[f32; 256]; H],
        bmax: &mut [f32; H],
        scale: f32,
    ) {
        let (hd, bs) = (self.shape.head_dim, self.shape.block_size);
        let mut j0 = 0;
        while j0 < len {
            // W lanes from `first + j0`, inside the block (bs is a multiple of W); lanes past
            // `len` are computed and dropped.
            let dots = key_dots::<H, W>(qh, &kt[first + j0..], hd, bs);
            let n = W.min(len - j0);
            for h in 0..H {
                for j in 0..n {
                    let sc = dots[h][j] * scale;
                    scores[h][j0 + j] = sc;
                    bmax[h] = bmax[h].max(sc);
                }
            }
            j0 += W;
        }
    }
}

/// `dots[h][j] = sum_d q[h][d] * kt[d * bs + j]`, each lane a sequential sum over `d` with
/// the product rounded before the add (the reference's arithmetic). `kt` starts at the first
/// key; `W` keys from there lie inside the block.
#[allow(clippy::needless_range_loop)] // lanes index parallel register arrays
#[inline(always)]
fn key_dots<const H: usize, const W: usize>(
    qh: &[&[f32]; H],
    kt: &[f32],
    hd: usize,
    bs: usize,
) -> [[f32; W]; H] {
    assert!(kt.len() >= (hd - 1) * bs + W && qh.iter().all(|q| q.len() >= hd));
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if W.is_multiple_of(8) && W <= 16 {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 is in the build's target; every load is inside `kt` / `qh` (asserted).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; H];
            let lanes = W / 8;
            for d in 0..hd {
                let k = kt.as_ptr().add(d * bs);
                let kv = [_mm256_loadu_ps(k), _mm256_loadu_ps(k.add(8 * (lanes - 1)))];
                for h in 0..H {
                    let q = _mm256_set1_ps(*qh[h].get_unchecked(d));
                    for x in 0..lanes {
                        acc[h][x] = _mm256_add_ps(acc[h][x], _mm256_mul_ps(q, kv[x]));
                    }
                }
            }
            let mut out = [[0f32; W]; H];
            for h in 0..H {
                for x in 0..lanes {
                    _mm256_storeu_ps(out[h].as_mut_ptr().add(8 * x), acc[h][x]);
                }
            }
            return out;
        }
    }
    let mut dots = [[0f32; W]; H];
    for d in 0..hd {
        let k = &kt[d * bs..d * bs + W];
        for h in 0..H {
            let qd = qh[h][d];
            for j in 0..W {
                dots[h][j] += qd * k[j];
            }
        }
    }
    dots
}

/// Paged KV cache in host memory (f32): K transposed within each block, V as the reference
/// lays it out; attention by [`paged_attention_cpu_grouped`].
pub struct CpuPagedAttention {
    layout: KvCacheLayout,
    num_heads: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl CpuPagedAttention {
    pub fn new(layout: KvCacheLayout, num_heads: usize) -> Self {
        let per_layer = layout.num_slots() * layout.num_kv_heads * layout.head_dim;
        Self {
            layout,
            num_heads,
            k: (0..layout.num_layers)
                .map(|_| vec![0f32; per_layer])
                .collect(),
            v: (0..layout.num_layers)
                .map(|_| vec![0f32; per_layer])
                .collect(),
        }
    }
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
        let width = self.layout.num_kv_heads * self.layout.head_dim;
        let n_slots = self.layout.num_slots();
        for &slot in &batch.slot_mapping {
            if slot as usize >= n_slots {
                return Err(EngineError::Config(format!(
                    "slot {slot} is outside the KV cache ({n_slots} slots)"
                )));
            }
        }
        let bs = self.layout.block_size;
        let kt = &mut self.k[layer];
        with_f32(k, |data| {
            // K transposed within its block: [block, kv head, d, slot in block].
            for (row, &slot) in batch.slot_mapping.iter().enumerate() {
                let (block, i) = (slot as usize / bs, slot as usize % bs);
                for (j, &x) in data[row * width..(row + 1) * width].iter().enumerate() {
                    kt[(block * width + j) * bs + i] = x;
                }
            }
        })?;
        let vc = &mut self.v[layer];
        with_f32(v, |data| {
            for (row, &slot) in batch.slot_mapping.iter().enumerate() {
                let s = slot as usize * width;
                vc[s..s + width].copy_from_slice(&data[row * width..(row + 1) * width]);
            }
        })?;
        Ok(())
    }

    fn attend(&self, layer: usize, q: &Tensor, batch: &FlatBatch) -> Result<Tensor> {
        let l = self.layout;
        let shape = PagedAttentionShape {
            num_heads: self.num_heads,
            num_kv_heads: l.num_kv_heads,
            head_dim: l.head_dim,
            block_size: l.block_size,
            scale: 1.0 / (l.head_dim as f32).sqrt(),
        };
        let n = batch.num_tokens();
        let mut out = vec![0f32; n * self.num_heads * l.head_dim];
        with_f32(q, |qd| {
            paged_attention_cpu_grouped(
                shape,
                qd,
                &self.k[layer],
                &self.v[layer],
                &batch.query_start_loc,
                &batch.context_lens,
                &batch.block_tables,
                &mut out,
            )
        })?;
        Ok(
            Tensor::from_vec(out, (n, self.num_heads * l.head_dim), &Device::Cpu)?
                .to_dtype(q.dtype())?,
        )
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
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "element {i}: {a} vs {b}"
            );
        }
    }

    /// The grouped kernel is the reference's arithmetic: the same bits, for decode rows and
    /// chunked prompts, one head or a whole group per task, block sizes 16, 8 and 4.
    #[test]
    fn grouped_attention_equals_the_reference_bit_for_bit() {
        for (nh, nkv, hd, bs) in [
            (9, 3, 64, 16),
            (8, 2, 32, 8),
            (6, 6, 16, 4),
            (12, 2, 16, 32),
        ] {
            let num_blocks = 24;
            let mut seed = 11;
            let k = crate::attention::lcg_uniform(num_blocks * bs * nkv * hd, &mut seed);
            let v = crate::attention::lcg_uniform(num_blocks * bs * nkv * hd, &mut seed);
            let mut k_t = vec![0f32; k.len()];
            for b in 0..num_blocks {
                for i in 0..bs {
                    for h in 0..nkv {
                        for d in 0..hd {
                            k_t[((b * nkv + h) * hd + d) * bs + i] =
                                k[((b * bs + i) * nkv + h) * hd + d];
                        }
                    }
                }
            }
            // Three sequences: a 5-token chunk of a longer prompt, one decode row deep in
            // its context, a 2-token chunk from position 0.
            let tables: Vec<Vec<u32>> =
                vec![(0..8).rev().collect(), (8..20).collect(), vec![23, 21]];
            let context_lens = vec![(5 * bs / 2).min(8 * bs), 11 * bs + 3, 2];
            let qsl = vec![0, 5, 6, 8];
            let shape = PagedAttentionShape {
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
                block_size: bs,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let q = crate::attention::lcg_uniform(8 * nh * hd, &mut seed);
            let mut want = vec![0f32; q.len()];
            paged_attention_cpu(shape, &q, &k, &v, &qsl, &context_lens, &tables, &mut want);
            for heads_per_task in [1, nh / nkv] {
                let mut got = vec![0f32; q.len()];
                attention_by_tasks(
                    shape,
                    heads_per_task,
                    &q,
                    &k_t,
                    &v,
                    &qsl,
                    &context_lens,
                    &tables,
                    &mut got,
                );
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "shape {nh}/{nkv}/{hd}/{bs}, {heads_per_task} heads per task, element {i}"
                    );
                }
            }
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
