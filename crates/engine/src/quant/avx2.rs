//! AVX2 versions of the block dot products. They compute exactly what the portable versions
//! in `blocks.rs` compute (same lanes, same fused multiply-adds, same final sum), so results
//! are bit-identical whichever runs. x86-64-v3 (our build baseline) guarantees AVX2 and FMA.

use std::arch::x86_64::*;

use super::blocks::{BlockQ4_1, BlockQ8_0, BlockQ8_1};

#[inline]
pub(super) unsafe fn hsum8(x: __m256) -> f32 {
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
