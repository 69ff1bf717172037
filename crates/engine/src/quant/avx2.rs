//! AVX2 versions of the block dot products. They compute exactly what the portable versions
//! in `blocks.rs` compute (same lanes, same fused multiply-adds, same final sum), so results
//! are bit-identical whichever runs. x86-64-v3 (our build baseline) guarantees AVX2 and FMA.

use std::arch::x86_64::*;

use super::blocks::{BlockQ4_1, BlockQ8_0, BlockQ8_1};

#[inline]
unsafe fn hsum8(x: __m256) -> f32 {
    let hi = _mm256_extractf128_ps(x, 1);
    let r = _mm_add_ps(hi, _mm256_castps256_ps128(x));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// Eight i32 lanes, each the sum of four u8 x i8 products, as f32.
#[inline]
unsafe fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

#[inline]
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    // SAFETY: AVX2/FMA are part of the build's target (checked by cfg at the call site);
    // loads are unaligned loads of whole blocks.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        let low = _mm256_set1_epi8(0x0F);
        for (wb, xb) in w.iter().zip(x) {
            summs = wb.m.to_f32().mul_add(xb.s.to_f32(), summs);
            let d = _mm256_set1_ps(wb.d.to_f32() * xb.d.to_f32());
            let tmp = _mm_loadu_si128(wb.qs.as_ptr() as *const __m128i);
            let qx = _mm256_and_si256(low, _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp));
            let qy = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(qx, qy), acc);
        }
        hsum8(acc) + summs
    }
}

/// Four activation rows against one weight row: each weight block is unpacked once for all
/// four. Per row, exactly the lanes and fused multiply-adds of [`dot_q4_1_q8_1`].
#[inline]
pub fn dot4_q4_1_q8_1(w: &[BlockQ4_1], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    let xd: [Vec<f32>; 4] = x.map(|r| r.iter().map(|b| b.d.to_f32()).collect());
    let xs: [Vec<f32>; 4] = x.map(|r| r.iter().map(|b| b.s.to_f32()).collect());
    dot4_q4_1_q8_1_s(
        w,
        x,
        [&xd[0], &xd[1], &xd[2], &xd[3]],
        [&xs[0], &xs[1], &xs[2], &xs[3]],
    )
}

#[inline]
pub fn dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    // SAFETY: as above.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (wb, xb) in w.iter().zip(x) {
            let d = _mm256_set1_ps(wb.d.to_f32() * xb.d.to_f32());
            let qx = _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i);
            let qy = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let ax = _mm256_sign_epi8(qx, qx);
            let sy = _mm256_sign_epi8(qy, qx);
            acc = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(ax, sy), acc);
        }
        hsum8(acc)
    }
}

/// Four activation rows against one Q8_0 weight row: each weight block is loaded (and its
/// sign taken) once for all four. Per row, exactly the lanes and fused multiply-adds of
/// [`dot_q8_0_q8_0`].
#[inline]
pub fn dot4_q8_0_q8_0(w: &[BlockQ8_0], x: [&[BlockQ8_0]; 4]) -> [f32; 4] {
    let xd: [Vec<f32>; 4] = x.map(|r| r.iter().map(|b| b.d.to_f32()).collect());
    dot4_q8_0_q8_0_s(w, x, [&xd[0], &xd[1], &xd[2], &xd[3]])
}

/// [`dot4_q4_1_q8_1`] with each activation block's `d` and `s` already in f32 (`xd`, `xs`:
/// converted once per row instead of once per row per weight row). The same bits.
#[inline]
pub fn dot4_q4_1_q8_1_s(
    w: &[BlockQ4_1],
    x: [&[BlockQ8_1]; 4],
    xd: [&[f32]; 4],
    xs: [&[f32]; 4],
) -> [f32; 4] {
    // SAFETY: as above; the scale slices are as long as the block rows (checked by the
    // caller's slicing, indexed below with bounds checks).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [0f32; 4];
        let low = _mm256_set1_epi8(0x0F);
        for (b, wb) in w.iter().enumerate() {
            let wd = wb.d.to_f32();
            let wm = wb.m.to_f32();
            let tmp = _mm_loadu_si128(wb.qs.as_ptr() as *const __m128i);
            let qx = _mm256_and_si256(low, _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp));
            for r in 0..4 {
                summs[r] = wm.mul_add(xs[r][b], summs[r]);
                let d = _mm256_set1_ps(wd * xd[r][b]);
                let qy = _mm256_loadu_si256(x[r][b].qs.as_ptr() as *const __m256i);
                acc[r] = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(qx, qy), acc[r]);
            }
        }
        [
            hsum8(acc[0]) + summs[0],
            hsum8(acc[1]) + summs[1],
            hsum8(acc[2]) + summs[2],
            hsum8(acc[3]) + summs[3],
        ]
    }
}

/// [`dot4_q8_0_q8_0`] with each activation block's `d` already in f32. The same bits.
#[inline]
pub fn dot4_q8_0_q8_0_s(w: &[BlockQ8_0], x: [&[BlockQ8_0]; 4], xd: [&[f32]; 4]) -> [f32; 4] {
    // SAFETY: as above.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, wb) in w.iter().enumerate() {
            let wd = wb.d.to_f32();
            let qx = _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i);
            let ax = _mm256_sign_epi8(qx, qx);
            for r in 0..4 {
                let d = _mm256_set1_ps(wd * xd[r][b]);
                let qy = _mm256_loadu_si256(x[r][b].qs.as_ptr() as *const __m256i);
                let sy = _mm256_sign_epi8(qy, qx);
                acc[r] = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(ax, sy), acc[r]);
            }
        }
        [hsum8(acc[0]), hsum8(acc[1]), hsum8(acc[2]), hsum8(acc[3])]
    }
}
