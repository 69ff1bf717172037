//! Blocks back to f32 (ggml's `dequantize_row_*`): for measuring what a quantization costs
//! against the same weights unquantized (`LlamaModel::dequantize_linears`).

use super::blocks::{high_bit, nibble, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK};
use super::dots::q6_k_value;
use super::groups::{column_blocks, Grouped};
use super::kblocks::{scales_mins_k4, BlockQ4K, BlockQ5K, BlockQ6K, QK_K};
use super::QuantWeights;

/// One block's values into `out` (its length the block's).
trait Dequantize {
    fn dequantize(&self, out: &mut [f32]);
}

impl Dequantize for BlockQ4_0 {
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(&self.qs, i) as i32 - 8) as f32 * d;
        }
    }
}

impl Dequantize for BlockQ4_1 {
    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (i, o) in out.iter_mut().enumerate() {
            *o = nibble(&self.qs, i) as f32 * d + m;
        }
    }
}

impl Dequantize for BlockQ5_0 {
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (i, o) in out.iter_mut().enumerate() {
            let q = (nibble(&self.qs, i) | high_bit(&self.qh, i)) as i32 - 16;
            *o = q as f32 * d;
        }
    }
}

impl Dequantize for BlockQ5_1 {
    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(&self.qs, i) | high_bit(&self.qh, i)) as f32 * d + m;
        }
    }
}

impl Dequantize for BlockQ8_0 {
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Q4_K/Q5_K: `d * sc_s * q - dmin * m_s` per 32-value sub-block `s`.
fn dequantize_k4(
    d: f32,
    dmin: f32,
    packed: &[u8; 12],
    q: impl Fn(usize, usize) -> u8,
    out: &mut [f32],
) {
    let (sc, mn) = scales_mins_k4(packed);
    for s in 0..8 {
        let (dl, ml) = (d * sc[s] as f32, dmin * mn[s] as f32);
        for i in 0..32 {
            out[32 * s + i] = dl * q(s, i) as f32 - ml;
        }
    }
}

impl Dequantize for BlockQ4K {
    fn dequantize(&self, out: &mut [f32]) {
        let q = |s: usize, i: usize| {
            let b = self.qs[32 * (s / 2) + i];
            if s.is_multiple_of(2) {
                b & 0x0F
            } else {
                b >> 4
            }
        };
        dequantize_k4(self.d.to_f32(), self.dmin.to_f32(), &self.scales, q, out);
    }
}

impl Dequantize for BlockQ5K {
    fn dequantize(&self, out: &mut [f32]) {
        let q = |s: usize, i: usize| {
            let b = self.qs[32 * (s / 2) + i];
            let low = if s.is_multiple_of(2) {
                b & 0x0F
            } else {
                b >> 4
            };
            low | ((self.qh[i] >> s) & 1) << 4
        };
        dequantize_k4(self.d.to_f32(), self.dmin.to_f32(), &self.scales, q, out);
    }
}

impl Dequantize for BlockQ6K {
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for s in 0..8 {
            for i in 0..32 {
                let sc = self.scales[2 * s + i / 16] as f32;
                out[32 * s + i] = d * sc * (q6_k_value(self, s, i) as i32 - 32) as f32;
            }
        }
    }
}

/// `[n, k]` rows from `[n, kb]` blocks of `bk` values.
fn rows<B: Dequantize>(blocks: &[B], n: usize, k: usize, bk: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * k];
    for (row, blocks) in out.chunks_exact_mut(k).zip(blocks.chunks_exact(k / bk)) {
        for (o, blk) in row.chunks_exact_mut(bk).zip(blocks) {
            blk.dequantize(o);
        }
    }
    out
}

/// `[n, k]` rows from column groups of 32-value blocks.
fn grouped<B: Dequantize + Grouped>(groups: &[B::Group], n: usize, k: usize) -> Vec<f32> {
    let kb = k / QK;
    let blocks: Vec<B> = (0..n)
        .flat_map(|c| column_blocks::<B>(groups, kb, c))
        .collect();
    rows(&blocks, n, k, QK)
}

impl QuantWeights {
    /// The `[n, k]` weights as f32, row-major.
    pub fn dequantize(&self, n: usize, k: usize) -> Vec<f32> {
        match self {
            Self::Q4_0(g) => grouped::<BlockQ4_0>(g, n, k),
            Self::Q4_1(g) => grouped::<BlockQ4_1>(g, n, k),
            Self::Q5_0(g) => grouped::<BlockQ5_0>(g, n, k),
            Self::Q5_1(g) => grouped::<BlockQ5_1>(g, n, k),
            Self::Q8_0(g) => grouped::<BlockQ8_0>(g, n, k),
            Self::Q4K(b) => rows(b, n, k, QK_K),
            Self::Q5K(b) => rows(b, n, k, QK_K),
            Self::Q6K(b) => rows(b, n, k, QK_K),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::InSituType;

    /// Quantize-then-dequantize lands within half a step of each value (4-bit: the block's
    /// range / 15 or so), in the right places (the grouped layout undone).
    #[test]
    fn dequantized_weights_are_the_weights_to_within_a_step() {
        let mut seed = 11;
        let (n, k) = (7, 512);
        let w = crate::quant::tests::rand_f32(n * k, &mut seed);
        for (ty, step) in [
            (InSituType::Q8_0, 2.0 / 127.0),
            (InSituType::Q4_0, 2.0 / 7.0),
            (InSituType::Q4K, 4.0 / 15.0),
        ] {
            let q = QuantWeights::quantize(ty, &w, n, k).unwrap();
            let back = q.dequantize(n, k);
            for (i, (a, b)) in back.iter().zip(&w).enumerate() {
                assert!((a - b).abs() <= step, "{ty:?} [{i}]: {a} vs {b}");
            }
        }
    }
}
