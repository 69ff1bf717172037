//! GGUF's K-quant super-blocks (256 values) and ggml's Q8_K quantization of activations.

use half::f16;

/// Values per super-block.
pub const QK_K: usize = 256;

/// 4-bit weights in 8 sub-blocks of 32, each with a 6-bit scale and min:
/// `w = d * sc_j * q - dmin * m_j`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    /// The 8 scales and 8 mins, 6 bits each, packed as [`scales_mins_k4`] reads them.
    pub scales: [u8; 12],
    /// Sub-blocks `2j` (low nibbles) and `2j + 1` (high nibbles) share bytes `32j..32j+32`.
    pub qs: [u8; QK_K / 2],
}

/// 5-bit weights: Q4_K's layout plus a high bit per value (bit `s` of `qh[i]` for value `i`
/// of sub-block `s`).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// 6-bit weights in 16 sub-blocks of 16 with signed 8-bit scales: `w = d * sc * (q - 32)`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// 8-bit activations with an f32 scale and the sums of each 16 values (pair with K-quants).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

impl Default for BlockQ4K {
    fn default() -> Self {
        Self {
            d: f16::ZERO,
            dmin: f16::ZERO,
            scales: [0; 12],
            qs: [0; QK_K / 2],
        }
    }
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

/// Q4_K/Q5_K's 8 scales and 8 mins from their 12 packed bytes (ggml's `utmp` shuffle).
#[inline]
pub fn scales_mins_k4(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let u = scales_mins_k4_words(packed);
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    scales[..4].copy_from_slice(&u[0].to_le_bytes());
    scales[4..].copy_from_slice(&u[1].to_le_bytes());
    mins[..4].copy_from_slice(&u[2].to_le_bytes());
    mins[4..].copy_from_slice(&u[3].to_le_bytes());
    (scales, mins)
}

/// [`scales_mins_k4`] as ggml's four little-endian words (scales in words 0-1, mins in 2-3),
/// with no copies: the kernels' form.
#[inline(always)]
pub fn scales_mins_k4_words(packed: &[u8; 12]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let mut u = [word(0), word(4), word(8), 0];
    u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
    let uaux = u[1] & KMASK1;
    u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
    u[2] = uaux;
    u[0] &= KMASK1;
    u
}

/// ggml's `nearest_int`: round half to even through the f32 adder (exact for |x| < 2^22).
#[inline]
pub(super) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// ggml's `quantize_row_q8_K_ref` (the CPU backend uses it on x86 too): scale from the
/// signed value of largest magnitude, `-127 / max`, values capped at 127, sums per 16.
pub fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i32).sum::<i32>() as i16;
        }
        b.d = 1.0 / iscale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_ggml_sizes() {
        assert_eq!(std::mem::size_of::<BlockQ4K>(), 144);
        assert_eq!(std::mem::size_of::<BlockQ5K>(), 176);
        assert_eq!(std::mem::size_of::<BlockQ6K>(), 210);
        assert_eq!(std::mem::size_of::<BlockQ8K>(), 292);
    }

    #[test]
    fn scales_and_mins_unpack_as_ggml_describes_them() {
        // get_scale_min_k4: j < 4: q[j] & 63, q[j + 4] & 63; else the low/high nibbles of
        // q[j + 4] with the top 2 bits of q[j - 4] / q[j].
        let q: [u8; 12] = std::array::from_fn(|i| (i as u8).wrapping_mul(97).wrapping_add(13));
        let (sc, mn) = scales_mins_k4(&q);
        for j in 0..8 {
            let (s, m) = if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                (
                    (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                    (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                )
            };
            assert_eq!((sc[j], mn[j]), (s, m), "sub-block {j}");
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (126.7, 127),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
    }
}
