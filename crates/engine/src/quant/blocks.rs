//! GGUF block layouts and ggml's reference quantization of activations.

use half::f16;

pub const QK: usize = 32;

/// 4-bit weights with a scale and a minimum: `w = d * q + m`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

/// 8-bit values with a scale: `x = d * q`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// 8-bit activations with a scale and `s = d * sum(q)` (pairs with Q4_1's minimum).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// The activations' blocks: Q8_0, or Q8_1 with its sum term.
pub trait Q8Block: Copy {
    /// Stores a quantized block: the scale `d` (as f16), the values, and for Q8_1
    /// `s = d * sum(q)` with the unrounded `d`.
    fn store(&mut self, d: f32, qs: [i8; QK], sum: i32);
}

impl Q8Block for BlockQ8_0 {
    #[inline]
    fn store(&mut self, d: f32, qs: [i8; QK], _sum: i32) {
        self.d = f16::from_f32(d);
        self.qs = qs;
    }
}

impl Q8Block for BlockQ8_1 {
    #[inline]
    fn store(&mut self, d: f32, qs: [i8; QK], sum: i32) {
        self.d = f16::from_f32(d);
        self.s = f16::from_f32(d * sum as f32);
        self.qs = qs;
    }
}

/// ggml's `quantize_row_q8_0` / `quantize_row_q8_1`: round half to even, as the SIMD path
/// does.
pub fn quantize_row_q8<B: Q8Block>(x: &[f32], out: &mut [B]) {
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let max = amax(xs);
        let id = if max != 0.0 { 127.0 / max } else { 0.0 };
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        b.store(max / 127.0, qs, sum);
    }
}

/// ggml's AVX2 horizontal sum of 8 lanes: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
#[inline]
pub fn hsum8(l: &[f32; 8]) -> f32 {
    let r = [l[4] + l[0], l[5] + l[1], l[6] + l[2], l[7] + l[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Dot product of one Q4_1 weight row with one Q8_1 activation row, in ggml's AVX2 order:
/// eight f32 lanes of 4-product integer sums, one fused multiply-add per block per lane,
/// the min terms summed apart. The same bits as llama.cpp on any machine.
#[inline]
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (wb, xb) in w.iter().zip(x) {
        let d = wb.d.to_f32() * xb.d.to_f32();
        summs = wb.m.to_f32().mul_add(xb.s.to_f32(), summs);
        for (lane, a) in acc.iter_mut().enumerate() {
            let mut sumi = 0i32;
            for b in lane * 4..lane * 4 + 4 {
                // Bytes 0..16 are the low nibbles, 16..32 the high ones.
                let q = if b < 16 {
                    wb.qs[b] & 0x0F
                } else {
                    wb.qs[b - 16] >> 4
                };
                sumi += q as i32 * xb.qs[b] as i32;
            }
            *a = d.mul_add(sumi as f32, *a);
        }
    }
    hsum8(&acc) + summs
}

/// Dot product of one Q8_0 weight row with one Q8_0 activation row, in ggml's AVX2 order.
#[inline]
pub fn dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (wb, xb) in w.iter().zip(x) {
        let d = wb.d.to_f32() * xb.d.to_f32();
        for (lane, a) in acc.iter_mut().enumerate() {
            let mut sumi = 0i32;
            for b in lane * 4..lane * 4 + 4 {
                sumi += wb.qs[b] as i32 * xb.qs[b] as i32;
            }
            *a = d.mul_add(sumi as f32, *a);
        }
    }
    hsum8(&acc)
}
