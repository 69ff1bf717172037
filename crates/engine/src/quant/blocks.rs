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

/// 4-bit weights with a scale, offset by 8: `w = d * (q - 8)`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// 5-bit weights with a scale, offset by 16: `w = d * (q - 16)`; bit 4 of value `i` is bit `i`
/// of `qh` (little-endian).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 5-bit weights with a scale and a minimum: `w = d * q + m` (`qh` as in [`BlockQ5_0`]).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
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

/// Value `i` (0..32) of a block's 4-bit quants: bytes 0..16 hold values 0..16 in their low
/// nibbles and 16..32 in their high ones.
#[inline]
pub fn nibble(qs: &[u8; QK / 2], i: usize) -> u8 {
    if i < 16 {
        qs[i] & 0x0F
    } else {
        qs[i - 16] >> 4
    }
}

/// Bit `i` of a Q5 block's high bits, as 0 or 16.
#[inline]
pub fn high_bit(qh: &[u8; 4], i: usize) -> u8 {
    ((u32::from_le_bytes(*qh) >> i) & 1) as u8 * 16
}

/// GGUF's bytes as blocks of `T` (whole blocks; a partial one at the end is dropped).
pub fn cast_blocks<T: PlainBlock>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    bytes
        .chunks_exact(size)
        // SAFETY: T is a PlainBlock (no invalid bit patterns),
        // and read_unaligned copes with the byte buffer's alignment.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr() as *const T) })
        .collect()
}

/// A `repr(C)` block of plain integers and floats: every bit pattern is a valid value.
///
/// # Safety
/// Only for types of which that is true.
pub unsafe trait PlainBlock: Copy {}

// SAFETY: each is repr(C) over u8/i8/i16/f16/f32 fields and arrays.
unsafe impl PlainBlock for BlockQ4_0 {}
unsafe impl PlainBlock for BlockQ4_1 {}
unsafe impl PlainBlock for BlockQ5_0 {}
unsafe impl PlainBlock for BlockQ5_1 {}
unsafe impl PlainBlock for BlockQ8_0 {}
unsafe impl PlainBlock for BlockQ8_1 {}
unsafe impl PlainBlock for super::kblocks::BlockQ4K {}
unsafe impl PlainBlock for super::kblocks::BlockQ5K {}
unsafe impl PlainBlock for super::kblocks::BlockQ6K {}
unsafe impl PlainBlock for super::kblocks::BlockQ8K {}
