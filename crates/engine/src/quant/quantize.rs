//! Weights quantized at load (in-situ quantization, `--quantization`): ggml's reference
//! quantizers for Q8_0, Q4_0 and Q4_K, so a model quantized here holds the bytes
//! `llama-quantize` would write for the same f32 weights (without an importance matrix;
//! checked against ggml's own output in `ggml_fixture.rs`).

use half::f16;

use super::blocks::{BlockQ4_0, BlockQ8_0, QK};
use super::kblocks::{nearest_int, BlockQ4K, QK_K};

/// `quantize_row_q8_0_ref`: `d = amax / 127`, values `round(x / d)` (half away from zero).
pub fn quantize_row_q8_0_ref(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        for (q, v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round() as i8;
        }
    }
}

/// `quantize_row_q4_0_ref`: `d = max / -8` from the signed value of largest magnitude,
/// values `x / d + 8.5` truncated, capped at 15.
pub fn quantize_row_q4_0_ref(x: &[f32], out: &mut [BlockQ4_0]) {
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        for j in 0..QK / 2 {
            b.qs[j] = q(xs[j]) | (q(xs[QK / 2 + j]) << 4);
        }
    }
}

/// `make_qkx2_quants`: a 4-bit scale and min for 32 values by a weighted search; returns the
/// scale and `-min`, the levels in `levels`.
fn make_qkx2_quants(x: &[f32; 32], weights: &[f32; 32], levels: &mut [u8; 32]) -> (f32, f32) {
    const NMAX: i32 = 15;
    const RMIN: f32 = -1.0;
    const RDELTA: f32 = 0.1;
    const NSTEP: i32 = 20;
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let mut iscale = NMAX as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..32 {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX);
        levels[i] = l as u8;
        let diff = scale * levels[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=NSTEP {
        iscale = (RMIN + RDELTA * is as f32 + NMAX as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..32 {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX);
            aux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..32 {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                *levels = aux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `quantize_row_q4_K_ref`: per 32 values a scale and min (`make_qkx2_quants`, weighted by
/// `rms + |x|`), both quantized to 6 bits against the super-block's largest, then the values
/// requantized with the stored scales.
pub fn quantize_row_q4_k_ref(x: &[f32], out: &mut [BlockQ4K]) {
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut levels = [0u8; QK_K];
        let mut scales = [0f32; 8];
        let mut mins = [0f32; 8];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..8 {
            let sub: &[f32; 32] = xs[32 * j..32 * j + 32].try_into().expect("32 values");
            let sum_x2 = sub.iter().fold(0f32, |s, v| s + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            let weights: [f32; 32] = std::array::from_fn(|l| av_x + sub[l].abs());
            let mut lv = [0u8; 32];
            (scales[j], mins[j]) = make_qkx2_quants(sub, &weights, &mut lv);
            levels[32 * j..32 * j + 32].copy_from_slice(&lv);
            max_scale = max_scale.max(scales[j]);
            max_min = max_min.max(mins[j]);
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut packed = [0u8; 12];
        for j in 0..8 {
            // ggml stores nearest_int's result in a u8 before capping at 63.
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                packed[j] = ls;
                packed[j + 4] = lm;
            } else {
                packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                packed[j - 4] |= (ls >> 4) << 6;
                packed[j] |= (lm >> 4) << 6;
            }
        }
        b.scales = packed;
        b.d = f16::from_f32(max_scale / 63.0);
        b.dmin = f16::from_f32(max_min / 63.0);
        let (sc, mn) = super::kblocks::scales_mins_k4(&packed);
        for j in 0..8 {
            let d = b.d.to_f32() * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            let dm = b.dmin.to_f32() * mn[j] as f32;
            for i in 0..32 {
                levels[32 * j + i] = nearest_int((xs[32 * j + i] + dm) / d).clamp(0, 15) as u8;
            }
        }
        for (g, q) in b.qs.chunks_exact_mut(32).enumerate() {
            for l in 0..32 {
                q[l] = levels[64 * g + l] | (levels[64 * g + l + 32] << 4);
            }
        }
    }
}

/// The layouts `--quantization` quantizes float weights into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InSituType {
    Q8_0,
    Q4_0,
    Q4K,
}

impl std::str::FromStr for InSituType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Self::Q8_0),
            "q4_0" => Ok(Self::Q4_0),
            "q4_k" => Ok(Self::Q4K),
            other => Err(format!(
                "--quantization {other:?}: expected q8_0, q4_0 or q4_k (in-situ)"
            )),
        }
    }
}

impl InSituType {
    /// Values per block (a row's width must be a multiple).
    pub fn block_len(self) -> usize {
        match self {
            Self::Q8_0 | Self::Q4_0 => QK,
            Self::Q4K => QK_K,
        }
    }
}

/// `[n, k]` row-major f32 weights quantized row by row (in parallel) into `T` blocks.
pub(crate) fn quantize_rows<T: Default + Clone + Send>(
    w: &[f32],
    k: usize,
    bk: usize,
    q: fn(&[f32], &mut [T]),
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = vec![T::default(); w.len() / bk];
    out.par_chunks_mut(k / bk)
        .zip(w.par_chunks(k))
        .for_each(|(blocks, row)| q(row, blocks));
    out
}

impl super::QuantWeights {
    /// `[n, k]` f32 weights quantized as `ty` into our kernels' layout; `None` when `k` is
    /// not a multiple of the type's block.
    pub fn quantize(ty: InSituType, w: &[f32], n: usize, k: usize) -> Option<Self> {
        if k == 0 || !k.is_multiple_of(ty.block_len()) || w.len() != n * k {
            return None;
        }
        use super::groups::group_columns;
        let kb = k / QK;
        Some(match ty {
            InSituType::Q8_0 => Self::Q8_0(group_columns(
                &quantize_rows(w, k, QK, quantize_row_q8_0_ref),
                n,
                kb,
            )),
            InSituType::Q4_0 => Self::Q4_0(group_columns(
                &quantize_rows(w, k, QK, quantize_row_q4_0_ref),
                n,
                kb,
            )),
            InSituType::Q4K => Self::Q4K(quantize_rows(w, k, QK_K, quantize_row_q4_k_ref)),
        })
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        fn b<T>(v: &[T]) -> usize {
            std::mem::size_of_val(v)
        }
        match self {
            Self::Q4_0(v) => b(v),
            Self::Q4_1(v) => b(v),
            Self::Q5_0(v) => b(v),
            Self::Q5_1(v) => b(v),
            Self::Q8_0(v) => b(v),
            Self::Q4K(v) => b(v),
            Self::Q5K(v) => b(v),
            Self::Q6K(v) => b(v),
        }
    }
}
