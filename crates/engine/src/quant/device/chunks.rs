//! A line-by-line CPU mirror of the CUDA kernels' unpacking (`unpack<TY>` and the chunk
//! form in kernels/quant_matmul.cu), tested against the CPU dequantizer for every type: the
//! kernels' index and bit math is checked here, on any machine, before a GPU runs it.

use half::f16;

use super::DeviceQuantType as T;

/// One 32-value chunk: eight int8x4 words (values 4i..4i+3 in word i) and fa, fb, fm.
pub struct Chunk {
    pub w: [i32; 8],
    pub fa: f32,
    pub fb: f32,
    pub fm: f32,
}

fn ld32(p: &[u8]) -> i32 {
    i32::from_le_bytes([p[0], p[1], p[2], p[3]])
}

fn ld_f16(p: &[u8]) -> f32 {
    f16::from_le_bytes([p[0], p[1]]).to_f32()
}

fn spread4(b: i32) -> i32 {
    ((b & 1) << 4) | ((b & 2) << 11) | ((b & 4) << 18) | ((b & 8) << 25)
}

/// `__vsubss4(x, 0x20202020)`: 32 off each signed byte (the Q6_K quants stay in range).
fn sub32_bytes(x: i32) -> i32 {
    let b = x.to_le_bytes().map(|v| (v as i8).saturating_sub(32) as u8);
    i32::from_le_bytes(b)
}

/// Chunk `c` (32 values) of a weight row in GGUF blocks of `ty`.
pub fn unpack(ty: T, row: &[u8], c: usize) -> Chunk {
    let mut w = [0i32; 8];
    match ty {
        T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 => {
            let qs = match ty {
                T::Q4_0 => 2,
                T::Q4_1 => 4,
                T::Q5_0 => 6,
                _ => 8,
            };
            let b = &row[c * ty.block_bytes()..];
            let d = ld_f16(b);
            let qh = match ty {
                T::Q5_0 => ld32(&b[2..]),
                T::Q5_1 => ld32(&b[4..]),
                _ => 0,
            };
            for i in 0..4 {
                let u = ld32(&b[qs + 4 * i..]);
                w[i] = u & 0x0F0F0F0F;
                w[4 + i] = (u >> 4) & 0x0F0F0F0F;
                if matches!(ty, T::Q5_0 | T::Q5_1) {
                    w[i] |= spread4(qh >> (4 * i));
                    w[4 + i] |= spread4(qh >> (16 + 4 * i));
                }
            }
            let fm = match ty {
                T::Q4_0 => -8.0 * d,
                T::Q5_0 => -16.0 * d,
                _ => ld_f16(&b[2..]),
            };
            Chunk {
                w,
                fa: d,
                fb: d,
                fm,
            }
        }
        T::Q8_0 => {
            let b = &row[c * 34..];
            for (i, wi) in w.iter_mut().enumerate() {
                *wi = ld32(&b[2 + 4 * i..]);
            }
            let d = ld_f16(b);
            Chunk {
                w,
                fa: d,
                fb: d,
                fm: 0.0,
            }
        }
        T::Q4K | T::Q5K => {
            let b = &row[(c >> 3) * ty.block_bytes()..];
            let j = c & 7;
            let (d, dmin) = (ld_f16(b), ld_f16(&b[2..]));
            let s = &b[4..16];
            let (sc, mn) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                (
                    (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                    (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                )
            };
            let qs = if ty == T::Q4K { 16 } else { 48 } + 32 * (j >> 1);
            let shift = 4 * (j & 1);
            for (i, wi) in w.iter_mut().enumerate() {
                *wi = (ld32(&b[qs + 4 * i..]) >> shift) & 0x0F0F0F0F;
                if ty == T::Q5K {
                    *wi |= ((ld32(&b[16 + 4 * i..]) >> j) & 0x01010101) << 4;
                }
            }
            let fa = d * sc as f32;
            Chunk {
                w,
                fa,
                fb: fa,
                fm: -dmin * mn as f32,
            }
        }
        T::Q6K => {
            let b = &row[(c >> 3) * 210..];
            let j = c & 7;
            let (half, t) = (j >> 2, j & 3);
            let ql = 64 * half + 32 * (t & 1);
            let qh = 128 + 32 * half;
            let (lshift, hshift) = (4 * (t >> 1), 2 * t);
            for (i, wi) in w.iter_mut().enumerate() {
                let lo = (ld32(&b[ql + 4 * i..]) >> lshift) & 0x0F0F0F0F;
                let hi = ((ld32(&b[qh + 4 * i..]) >> hshift) & 0x03030303) << 4;
                *wi = sub32_bytes(lo | hi);
            }
            let d = ld_f16(&b[208..]);
            let sc = 192 + 8 * half + 2 * t;
            Chunk {
                w,
                fa: d * (b[sc] as i8) as f32,
                fb: d * (b[sc + 1] as i8) as f32,
                fm: 0.0,
            }
        }
    }
}

#[cfg(test)]
/// The chunk's 32 values as `dequantize_*` writes them.
pub fn dequantize(ch: &Chunk) -> [f32; 32] {
    std::array::from_fn(|v| {
        let (i, e) = (v / 4, v % 4);
        let q = ((ch.w[i] >> (8 * e)) & 0xFF) as u8 as i8 as f32;
        (if i < 4 { ch.fa } else { ch.fb }) * q + ch.fm
    })
}

/// `dp4a` over words: the sum of four int8 products plus `acc`.
fn dp4a(a: i32, b: i32, acc: i32) -> i32 {
    let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
    acc + (0..4)
        .map(|i| a[i] as i8 as i32 * b[i] as i8 as i32)
        .sum::<i32>()
}

/// The chunk's dot with an activation block (its 32 int8 values, d, d * sum), as `qmv_*`.
pub fn dot(ch: &Chunk, a: &[i8; 32], (da, sa): (f32, f32)) -> f32 {
    let word = |i: usize| {
        i32::from_le_bytes([
            a[4 * i] as u8,
            a[4 * i + 1] as u8,
            a[4 * i + 2] as u8,
            a[4 * i + 3] as u8,
        ])
    };
    let lo = (0..4).fold(0, |s, i| dp4a(ch.w[i], word(i), s));
    let hi = (4..8).fold(0, |s, i| dp4a(ch.w[i], word(i), s));
    da * (ch.fa * lo as f32 + ch.fb * hi as f32) + ch.fm * sa
}

/// `quantize_q8_1_*`: a block of 32 values to int8 with d = max|x| / 127 and d * sum(q).
pub fn quantize_q8_1(x: &[f32]) -> ([i8; 32], (f32, f32)) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let q: [i8; 32] = std::array::from_fn(|i| {
        if amax == 0.0 {
            0
        } else {
            (x[i] / d).round_ties_even() as i8
        }
    });
    let sum: i32 = q.iter().map(|&v| v as i32).sum();
    (q, (d, d * sum as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::device::random_blocks;
    use crate::quant::QuantWeights;

    /// Every type's chunks dequantize to the CPU dequantizer's values (random blocks: every
    /// quant bit and scale pattern), so the kernels' unpacking reads ggml's layouts.
    #[test]
    fn unpacking_matches_the_cpu_dequantizer() {
        let (n, k) = (3usize, 768usize);
        for ty in T::ALL {
            let raw = random_blocks(ty, n, k, 17 + ty as u64, 1.0);
            let want = QuantWeights::from_gguf(ty.ggml(), &raw, n, k)
                .unwrap_or_else(|| panic!("{ty:?}"))
                .dequantize(n, k);
            let row_bytes = ty.weight_bytes(1, k);
            for r in 0..n {
                let row = &raw[r * row_bytes..(r + 1) * row_bytes];
                for c in 0..k / 32 {
                    let got = dequantize(&unpack(ty, row, c));
                    for (v, g) in got.iter().enumerate() {
                        let w = want[r * k + 32 * c + v];
                        assert!(
                            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                            "{ty:?} row {r} chunk {c} value {v}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// The chunk form with 8-bit activations equals the dequantized weights' dot with the
    /// dequantized activations (the same integers, in f64).
    #[test]
    fn chunk_dot_is_the_dequantized_dot() {
        let k = 512usize;
        let mut seed = 3;
        let x = crate::lcg::lcg_uniform(k, &mut seed);
        for ty in T::ALL {
            let raw = random_blocks(ty, 1, k, 5 + ty as u64, 0.5);
            let w = QuantWeights::from_gguf(ty.ggml(), &raw, 1, k)
                .unwrap()
                .dequantize(1, k);
            let (mut got, mut want) = (0f64, 0f64);
            for c in 0..k / 32 {
                let (q, ds) = quantize_q8_1(&x[32 * c..32 * c + 32]);
                got += dot(&unpack(ty, &raw, c), &q, ds) as f64;
                want += (0..32)
                    .map(|i| w[32 * c + i] as f64 * q[i] as f64 * ds.0 as f64)
                    .sum::<f64>();
            }
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{ty:?}: {got} vs {want}"
            );
        }
    }
}
