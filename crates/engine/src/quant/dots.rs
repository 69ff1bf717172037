//! One weight row times one activation row, for each GGUF type, in the order of ggml's AVX2
//! `vec_dot` for that type (the reference the tiled kernels must equal bit for bit, and which
//! `ggml_fixture.rs` checks against values dumped from llama.cpp).
//!
//! ggml's AVX2 dots keep eight f32 lanes; lane `L` takes the integer products of bytes
//! `4L..4L+4` of every 32-byte chunk, exactly (integer sums do not depend on their order), is
//! converted to f32 once per block and joins its lane with one fused multiply-add per block.
//! Terms kept apart (Q4_1/Q5_1's mins, the K-quants' mins) follow ggml's own sequence.

use super::blocks::{
    high_bit, nibble, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK,
};
use super::kblocks::{scales_mins_k4, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};

/// ggml's AVX2 horizontal sum of 8 lanes: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
#[inline]
pub fn hsum8(l: &[f32; 8]) -> f32 {
    let r = [l[4] + l[0], l[5] + l[1], l[6] + l[2], l[7] + l[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// The eight lanes' integer sums of one 32-value block: `w(i) * x[i]` over bytes `4L..4L+4`.
#[inline]
fn lanes32(w: impl Fn(usize) -> i32, x: &[i8; QK]) -> [i32; 8] {
    std::array::from_fn(|lane| (lane * 4..lane * 4 + 4).map(|i| w(i) * x[i] as i32).sum())
}

/// The common loop of the 32-value types: per block the scale product `d` and the lanes.
#[inline]
fn dot32(blocks: impl Iterator<Item = (f32, [i32; 8])>) -> [f32; 8] {
    let mut acc = [0f32; 8];
    for (d, lanes) in blocks {
        for (a, s) in acc.iter_mut().zip(lanes) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    acc
}

/// Q4_0 x Q8_0: values `q - 8`.
pub fn dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    hsum8(&dot32(w.iter().zip(x).map(|(wb, xb)| {
        let d = wb.d.to_f32() * xb.d.to_f32();
        (d, lanes32(|i| nibble(&wb.qs, i) as i32 - 8, &xb.qs))
    })))
}

/// Q4_1 x Q8_1: the min terms `m * s` summed apart, in block order.
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    let mut summs = 0f32;
    let acc = dot32(w.iter().zip(x).map(|(wb, xb)| {
        summs = wb.m.to_f32().mul_add(xb.s.to_f32(), summs);
        let d = wb.d.to_f32() * xb.d.to_f32();
        (d, lanes32(|i| nibble(&wb.qs, i) as i32, &xb.qs))
    }));
    hsum8(&acc) + summs
}

/// Q5_0 x Q8_0: values `(q | h << 4) - 16`.
pub fn dot_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
    hsum8(&dot32(w.iter().zip(x).map(|(wb, xb)| {
        let d = wb.d.to_f32() * xb.d.to_f32();
        let v = |i| (nibble(&wb.qs, i) | high_bit(&wb.qh, i)) as i32 - 16;
        (d, lanes32(v, &xb.qs))
    })))
}

/// Q5_1 x Q8_1: values `q | h << 4`, min terms as Q4_1's.
pub fn dot_q5_1_q8_1(w: &[BlockQ5_1], x: &[BlockQ8_1]) -> f32 {
    let mut summs = 0f32;
    let acc = dot32(w.iter().zip(x).map(|(wb, xb)| {
        summs = wb.m.to_f32().mul_add(xb.s.to_f32(), summs);
        let d = wb.d.to_f32() * xb.d.to_f32();
        let v = |i| (nibble(&wb.qs, i) | high_bit(&wb.qh, i)) as i32;
        (d, lanes32(v, &xb.qs))
    }));
    hsum8(&acc) + summs
}

/// Q8_0 x Q8_0.
pub fn dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    hsum8(&dot32(w.iter().zip(x).map(|(wb, xb)| {
        let d = wb.d.to_f32() * xb.d.to_f32();
        (d, lanes32(|i| wb.qs[i] as i32, &xb.qs))
    })))
}

/// A super-block's lanes for 32-value sub-blocks `s` (0..8) of values `q(s, i)` with scales
/// `sc[s]`: lane `L` sums bytes `4L..4L+4` of every sub-block.
#[inline]
fn lanes_k(q: impl Fn(usize, usize) -> i32, sc: impl Fn(usize) -> i32, x: &[i8; QK_K]) -> [i32; 8] {
    std::array::from_fn(|lane| {
        (0..8)
            .map(|s| {
                let part: i32 = (lane * 4..lane * 4 + 4)
                    .map(|i| q(s, i) * x[32 * s + i] as i32)
                    .sum();
                sc(s) * part
            })
            .sum()
    })
}

/// The K-quants' min term of a super-block: `sum_l (m[2l] * p[2l] + m[2l+1] * p[2l+1])` in
/// four lanes, `p[t]` the activations' sums over sub-block `t` (two of their 16-value sums).
#[inline]
fn min_lanes(mins: &[u8; 8], bsums: &[i16; 16]) -> [i32; 4] {
    let p = |t: usize| bsums[2 * t].wrapping_add(bsums[2 * t + 1]) as i32;
    std::array::from_fn(|l| mins[2 * l] as i32 * p(2 * l) + mins[2 * l + 1] as i32 * p(2 * l + 1))
}

/// Q4_K x Q8_K: the mins in four f32 lanes (fused multiply-add per super-block), summed as
/// `(l0 + l2) + (l1 + l3)`.
pub fn dot_q4_k_q8_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    let mut acc_m = [0f32; 4];
    for (wb, xb) in w.iter().zip(x) {
        let d = xb.d * wb.d.to_f32();
        let dmin = -xb.d * wb.dmin.to_f32();
        let (sc, mn) = scales_mins_k4(&wb.scales);
        for (a, p) in acc_m.iter_mut().zip(min_lanes(&mn, &xb.bsums)) {
            *a = dmin.mul_add(p as f32, *a);
        }
        let q = |s: usize, i: usize| {
            let byte = wb.qs[32 * (s / 2) + i];
            (if s.is_multiple_of(2) {
                byte & 0x0F
            } else {
                byte >> 4
            }) as i32
        };
        let lanes = lanes_k(q, |s| sc[s] as i32, &xb.qs);
        for (a, s) in acc.iter_mut().zip(lanes) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(&acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
}

/// Q5_K x Q8_K: the mins summed as integers per super-block, then `summs += dmin * sum`.
pub fn dot_q5_k_q8_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (wb, xb) in w.iter().zip(x) {
        let d = xb.d * wb.d.to_f32();
        let dmin = -xb.d * wb.dmin.to_f32();
        let (sc, mn) = scales_mins_k4(&wb.scales);
        let p = min_lanes(&mn, &xb.bsums);
        summs = dmin.mul_add(((p[0] + p[1]) + (p[2] + p[3])) as f32, summs);
        let q = |s: usize, i: usize| {
            let byte = wb.qs[32 * (s / 2) + i];
            let low = if s.is_multiple_of(2) {
                byte & 0x0F
            } else {
                byte >> 4
            };
            (low | ((wb.qh[i] >> s) & 1) << 4) as i32
        };
        let lanes = lanes_k(q, |s| sc[s] as i32, &xb.qs);
        for (a, s) in acc.iter_mut().zip(lanes) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(&acc) + summs
}

/// Q6_K value `i` (0..32) of 32-value chunk `s` (0..8): chunks `4j + k` of half `j` take the
/// low or high nibbles of `ql[64j..]` / `ql[64j + 32..]` and bit pair `k` of `qh[32j + i]`.
#[inline]
pub fn q6_k_value(wb: &BlockQ6K, s: usize, i: usize) -> u8 {
    let (j, k) = (s / 4, s % 4);
    let l = wb.ql[64 * j + 32 * (k % 2) + i];
    let low = if k < 2 { l & 0x0F } else { l >> 4 };
    low | ((wb.qh[32 * j + i] >> (2 * k)) & 3) << 4
}

/// Q6_K x Q8_K: unsigned values times their 16-value scales, minus `32 * sc * bsum` per lane.
pub fn dot_q6_k_q8_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    for (wb, xb) in w.iter().zip(x) {
        let d = xb.d * wb.d.to_f32();
        let sc = |t: usize| wb.scales[t] as i32;
        let lanes: [i32; 8] = std::array::from_fn(|lane| {
            let sum: i32 = (0..8)
                .map(|s| {
                    let part: i32 = (lane * 4..lane * 4 + 4)
                        .map(|i| q6_k_value(wb, s, i) as i32 * xb.qs[32 * s + i] as i32)
                        .sum();
                    // Bytes 0..16 of a chunk take scale 2s, bytes 16..32 scale 2s + 1.
                    sc(2 * s + lane / 4) * part
                })
                .sum();
            let sub = xb.bsums[2 * lane] as i32 * sc(2 * lane)
                + xb.bsums[2 * lane + 1] as i32 * sc(2 * lane + 1);
            sum.wrapping_sub(sub.wrapping_mul(32))
        });
        for (a, s) in acc.iter_mut().zip(lanes) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(&acc)
}
