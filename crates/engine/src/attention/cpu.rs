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

/// The reference paged attention: `q`, `out` are `[num_tokens, num_heads, head_dim]`,
/// the caches `[num_blocks, block_size, num_kv_heads, head_dim]`.
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
    // Which sequence and which position each flat row belongs to.
    let mut row_seq = Vec::with_capacity(q.len() / (num_heads * hd));
    for s in 0..context_lens.len() {
        for _ in query_start_loc[s]..query_start_loc[s + 1] {
            row_seq.push(s);
        }
    }
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let row = idx / num_heads;
        let h = idx % num_heads;
        let kvh = h / group;
        let s = row_seq[row];
        let n_new = query_start_loc[s + 1] - query_start_loc[s];
        let pos = context_lens[s] - n_new + (row - query_start_loc[s]);
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

/// Paged KV cache in host memory (f32) with the reference attention above.
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
        for (src, dst) in [(k, &mut self.k[layer]), (v, &mut self.v[layer])] {
            with_f32(src, |data| {
                for (row, &slot) in batch.slot_mapping.iter().enumerate() {
                    let s = slot as usize * width;
                    dst[s..s + width].copy_from_slice(&data[row * width..(row + 1) * width]);
                }
            })?;
        }
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
            paged_attention_cpu(
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
