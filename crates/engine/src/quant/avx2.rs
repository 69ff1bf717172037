//! AVX2 pieces of the CPU quantized path: ggml's horizontal sum (the tiled matmul's last
//! step, `gemm.rs`) and the activations' quantization, bit-identical to `blocks.rs`'s portable
//! forms. x86-64-v3 (our build baseline) guarantees AVX2 and FMA.

use std::arch::x86_64::*;

use super::blocks::Q8Block;
use super::kblocks::{BlockQ8K, QK_K};

/// ggml's AVX2 horizontal sum of eight lanes (`blocks::hsum8` is its portable twin).
#[inline]
pub(super) unsafe fn hsum8(x: __m256) -> f32 {
    let hi = _mm256_extractf128_ps(x, 1);
    let r = _mm_add_ps(hi, _mm256_castps256_ps128(x));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
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

/// [`super::blocks::quantize_row_q8`], eight lanes at a time: the same bits.
pub fn quantize_row_q8<B: Q8Block>(x: &[f32], out: &mut [B]) {
    for (xs, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        // SAFETY: AVX2 is in the build's target; `xs` holds 32 values.
        let max = unsafe { block_amax(xs) };
        if !vector_safe(max) {
            super::blocks::quantize_row_q8(xs, std::slice::from_mut(b));
            continue;
        }
        // SAFETY: as above.
        let (qs, sum) = unsafe { quantize_block(xs, max) };
        b.store(max / 127.0, qs, sum);
    }
}

/// [`super::kblocks::quantize_row_q8_k`] in AVX2 vectors: the same bits. The largest |x|
/// is found eight lanes at a time and its first holder gives the sign; the values are then
/// quantized as [`quantize_block`] does (`127 / -max` is ggml's `-127 / max` exactly: IEEE
/// division is symmetric in sign; packing saturates at 127 as ggml's `MIN(127, ...)` caps).
pub fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        // SAFETY: AVX2 is in the build's target; each chunk holds 32 values.
        let amax = xs
            .chunks_exact(32)
            .map(|c| unsafe { block_amax(c) })
            .fold(0f32, |m, a| {
                if a.is_nan() || m.is_nan() {
                    f32::NAN
                } else {
                    m.max(a)
                }
            });
        // NaN, infinities, subnormal maxima and all-zero blocks: the scalar code's bits.
        if amax == 0.0 || !vector_safe(amax) {
            super::kblocks::quantize_row_q8_k(xs, std::slice::from_mut(b));
            continue;
        }
        // ggml keeps the first value of largest magnitude (its sign sets the scale's).
        let max = xs.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        for (c, qs) in xs.chunks_exact(32).zip(b.qs.chunks_exact_mut(32)) {
            // SAFETY: as above.
            let (q, _) = unsafe { quantize_block(c, -max) };
            qs.copy_from_slice(&q);
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / (-127.0 / max);
    }
}

/// Eight i32 lanes, each the sum of four u8 x i8 products (`u` unsigned, `s` signed), and the
/// K-quants' scaled form.
pub(super) trait Dot {
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;
    /// `sumi + madd(scale, maddubs(u, s))`: the pair sums of `u x s` (exact: no pair reaches
    /// 2^15 for the values here) times the i16 `scale` of each pair, added per i32 lane.
    unsafe fn scaled_dot_add(sumi: __m256i, u: __m256i, s: __m256i, scale: __m256i) -> __m256i;
}

pub(super) struct Avx2;
impl Dot for Avx2 {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        // No saturation: |u x s| pairs stay below 2^15 for 4-bit and sign-folded 8-bit values.
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn scaled_dot_add(sumi: __m256i, u: __m256i, s: __m256i, scale: __m256i) -> __m256i {
        _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, _mm256_maddubs_epi16(u, s)))
    }
}

/// ggml's `bytes_from_bits_32`: byte `i` is 0xFF where bit `i` of the 32 bits is set.
#[inline(always)]
pub(super) unsafe fn bytes_from_bits_32(bits: *const u8) -> __m256i {
    let x32 = std::ptr::read_unaligned(bits as *const i32);
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}
