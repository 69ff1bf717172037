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

/// A 32-value block's largest |x| (max is exact in any order), or NaN if any value is NaN.
#[inline]
unsafe fn block_amax(x: &[f32]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let a: [__m256; 4] =
        std::array::from_fn(|i| _mm256_andnot_ps(sign, _mm256_loadu_ps(x.as_ptr().add(8 * i))));
    let unordered = _mm256_or_ps(
        _mm256_cmp_ps::<_CMP_UNORD_Q>(a[0], a[1]),
        _mm256_cmp_ps::<_CMP_UNORD_Q>(a[2], a[3]),
    );
    if _mm256_movemask_ps(unordered) != 0 {
        return f32::NAN; // the scalar code decides what a NaN quantizes to
    }
    let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)))
}

/// Whether the vector form gives the scalar code's bits for this `max`: not for a block of
/// subnormals (`127 / max` overflows) or non-finite values, where the scalar code's
/// saturating casts decide.
#[inline]
fn vector_safe(max: f32) -> bool {
    max == 0.0 || (max.is_finite() && (127.0 / max).is_finite())
}

/// The block's values times `127 / max`, rounded half to even (the scalar code's
/// `round_ties_even`), as 32 i8 in order, and their i32 sum.
#[inline]
unsafe fn quantize_block(x: &[f32], max: f32) -> ([i8; 32], i32) {
    let id = _mm256_set1_ps(if max != 0.0 { 127.0 / max } else { 0.0 });
    let q: [__m256i; 4] = std::array::from_fn(|i| {
        let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * i)), id);
        _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(v))
    });
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let s4 = _mm_add_epi32(
        _mm256_extracti128_si256(sum, 1),
        _mm256_castsi256_si128(sum),
    );
    let s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01>(s4));
    // packs interleave the 128-bit halves; the permutation puts the 32 values back in order.
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut qs = [0i8; 32];
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, p);
    (qs, _mm_cvtsi128_si32(s4))
}

/// [`super::blocks::quantize_row_q8_0`], eight lanes at a time: the same bits.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xs, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        // SAFETY: AVX2 is in the build's target; `xs` holds 32 values.
        let max = unsafe { block_amax(xs) };
        if !vector_safe(max) {
            super::blocks::quantize_row_q8_0(xs, std::slice::from_mut(b));
            continue;
        }
        // SAFETY: as above.
        let (qs, _) = unsafe { quantize_block(xs, max) };
        b.d = half::f16::from_f32(max / 127.0);
        b.qs = qs;
    }
}

/// [`super::blocks::quantize_row_q8_1`], eight lanes at a time: the same bits.
pub fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xs, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        // SAFETY: as above.
        let max = unsafe { block_amax(xs) };
        if !vector_safe(max) {
            super::blocks::quantize_row_q8_1(xs, std::slice::from_mut(b));
            continue;
        }
        // SAFETY: as above.
        let (qs, sum) = unsafe { quantize_block(xs, max) };
        let d = max / 127.0;
        b.d = half::f16::from_f32(d);
        b.s = half::f16::from_f32(d * sum as f32);
        b.qs = qs;
    }
}
