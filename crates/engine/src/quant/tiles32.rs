//! Register tiles for the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): R activation
//! rows x C weight columns per pass over the K blocks, so each weight block is unpacked once
//! per R rows and each activation block loaded once per C columns. Each output element is
//! exactly `dots.rs`' product: the same eight integer lanes per block, the same `d_w * d_x`
//! and fused multiply-add in block order, the min term apart, the same horizontal sum.

use std::arch::x86_64::*;

use super::avx2::{bytes_from_bits_32, bytes_from_nibbles_32, hsum8, Avx2, Dot, Vnni};
use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use super::columns::COLUMN_GROUP as G;
use super::problem::{Problem, TaskKernels};

/// Blocks ahead that a tile asks the memory system for: a decode step streams every weight
/// from DRAM once, and the hardware prefetcher alone left the tiles waiting on it.
const PREFETCH_BLOCKS: usize = 16;

/// Prefetches the weight bytes `PREFETCH_BLOCKS` group-blocks ahead of block `b` (two cache
/// lines: a group-block is 4 x 18..34 bytes). Prefetching past the end is harmless.
#[inline(always)]
unsafe fn prefetch_ahead<T>(w: *const T, b: usize) {
    let p = w.wrapping_add((b + PREFETCH_BLOCKS) * G) as *const i8;
    _mm_prefetch::<_MM_HINT_T0>(p);
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
}

/// Column `c`'s first block in the grouped layout; its block `b` is `G * b` further.
#[inline(always)]
unsafe fn column<T>(w: *const T, kb: usize, c: usize) -> *const T {
    w.add(c / G * kb * G + c % G)
}

/// A 32-value weight block as the tiles read it.
pub(super) trait Block32: Copy {
    /// Unsigned values with a min term (paired with Q8_1's `s`), else signed values.
    const HAS_MIN: bool;
    /// The 32 values (u8 or i8) and `[d, m, _, _]` (m only where `HAS_MIN`).
    unsafe fn unpack(b: *const Self) -> (__m256i, __m128);
    /// What `unpack_unsigned` adds to a signed type's values (0 for the min types).
    const OFFSET: u8;
    /// The 32 values plus `OFFSET`, unsigned, and `[d, m, _, _]` (the 512-bit tiles' form;
    /// AVX-512BW code, called only from AVX-512 tasks).
    unsafe fn unpack_unsigned(b: *const Self) -> (__m256i, __m128);
}

/// 0x10 added to the bytes (nibbles) whose bit in the 32 bits at `qh` is set (AVX-512BW).
#[inline(always)]
unsafe fn with_high_bits(q: __m256i, qh: *const u8) -> __m256i {
    let k: __mmask32 = std::ptr::read_unaligned(qh as *const u32);
    _mm256_mask_add_epi8(q, k, q, _mm256_set1_epi8(0x10))
}

/// `[d, m, 0, 0]` from two f16 at the block's start (exact conversions).
#[inline(always)]
unsafe fn d_and_m<T>(b: *const T) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(b as *const i32)))
}

/// `[d, 0, 0, 0]` from the f16 at the block's start.
#[inline(always)]
unsafe fn d_only<T>(b: *const T) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(
        std::ptr::read_unaligned(b as *const u16) as i32
    ))
}

impl Block32 for BlockQ4_0 {
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(b: *const Self) -> (__m256i, __m128) {
        let q = bytes_from_nibbles_32((*b).qs.as_ptr());
        (_mm256_sub_epi8(q, _mm256_set1_epi8(8)), d_only(b))
    }
    const OFFSET: u8 = 8;
    #[inline(always)]
    unsafe fn unpack_unsigned(b: *const Self) -> (__m256i, __m128) {
        (bytes_from_nibbles_32((*b).qs.as_ptr()), d_only(b))
    }
}

impl Block32 for BlockQ4_1 {
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(b: *const Self) -> (__m256i, __m128) {
        (bytes_from_nibbles_32((*b).qs.as_ptr()), d_and_m(b))
    }
    const OFFSET: u8 = 0;
    #[inline(always)]
    unsafe fn unpack_unsigned(b: *const Self) -> (__m256i, __m128) {
        Self::unpack(b)
    }
}

impl Block32 for BlockQ5_0 {
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(b: *const Self) -> (__m256i, __m128) {
        // 0xF0 where the high bit is clear: (q | h << 4) - 16 as i8.
        let hi = _mm256_andnot_si256(
            bytes_from_bits_32((*b).qh.as_ptr()),
            _mm256_set1_epi8(0xF0u8 as i8),
        );
        let q = _mm256_or_si256(bytes_from_nibbles_32((*b).qs.as_ptr()), hi);
        (q, d_only(b))
    }
    const OFFSET: u8 = 16;
    #[inline(always)]
    unsafe fn unpack_unsigned(b: *const Self) -> (__m256i, __m128) {
        let q = bytes_from_nibbles_32((*b).qs.as_ptr());
        (with_high_bits(q, (*b).qh.as_ptr()), d_only(b))
    }
}

impl Block32 for BlockQ5_1 {
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(b: *const Self) -> (__m256i, __m128) {
        let hi = _mm256_and_si256(bytes_from_bits_32((*b).qh.as_ptr()), _mm256_set1_epi8(0x10));
        let q = _mm256_or_si256(bytes_from_nibbles_32((*b).qs.as_ptr()), hi);
        (q, d_and_m(b))
    }
    const OFFSET: u8 = 0;
    #[inline(always)]
    unsafe fn unpack_unsigned(b: *const Self) -> (__m256i, __m128) {
        let q = bytes_from_nibbles_32((*b).qs.as_ptr());
        (with_high_bits(q, (*b).qh.as_ptr()), d_and_m(b))
    }
}

impl Block32 for BlockQ8_0 {
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(b: *const Self) -> (__m256i, __m128) {
        (
            _mm256_loadu_si256((*b).qs.as_ptr() as *const __m256i),
            d_only(b),
        )
    }
    const OFFSET: u8 = 128;
    #[inline(always)]
    unsafe fn unpack_unsigned(b: *const Self) -> (__m256i, __m128) {
        let q = _mm256_loadu_si256((*b).qs.as_ptr() as *const __m256i);
        (_mm256_xor_si256(q, _mm256_set1_epi8(-128)), d_only(b))
    }
}

/// An R x C tile of outputs: rows `r0..r0+R` (within one lane group of four), columns
/// `c0..c0+C`. The activation blocks are
/// Q8_0 or Q8_1; both start with `d` and end with the 32 values, read through `x_qs`.
#[allow(clippy::needless_range_loop)] // rows and columns index parallel register arrays
#[inline(always)]
unsafe fn tile<W: Block32, X, I: Dot, const R: usize, const C: usize>(
    p: &Problem<W, X>,
    r0: usize,
    c0: usize,
) {
    let kb = p.kb;
    let w: [*const W; C] = std::array::from_fn(|c| column(p.w, kb, c0 + c));
    let x = p.x.add(r0 * kb);
    let (xd, xs) = (p.xd.add(r0 / 4 * kb), p.xs.add(r0 / 4 * kb));
    let x_qs = |blk: *const X| (blk as *const u8).add(std::mem::size_of::<X>() - 32);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut summs = [_mm_setzero_ps(); C];
    for b in 0..kb {
        let mut u = [_mm256_setzero_si256(); C];
        let mut sign = [_mm256_setzero_si256(); C];
        let mut wd = [_mm256_setzero_ps(); C];
        prefetch_ahead(w[0], b);
        for c in 0..C {
            let (q, dm) = W::unpack(w[c].add(b * G));
            wd[c] = _mm256_broadcastss_ps(dm);
            if W::HAS_MIN {
                // Lane r: m * s_r + summs (fused), the min term of row r in block order.
                let s4 = _mm_loadu_ps((*xs.add(b)).as_ptr());
                summs[c] = _mm_fmadd_ps(_mm_shuffle_ps::<0b0101_0101>(dm, dm), s4, summs[c]);
                u[c] = q;
            } else {
                // ggml's sign folding: |w| as unsigned, x takes w's sign.
                u[c] = _mm256_sign_epi8(q, q);
                sign[c] = q;
            }
        }
        for r in 0..R {
            let qy = _mm256_loadu_si256(x_qs(x.add(r * kb + b)) as *const __m256i);
            let xdr = _mm256_set1_ps((*xd.add(b))[r0 % 4 + r]);
            for c in 0..C {
                let y = if W::HAS_MIN {
                    qy
                } else {
                    _mm256_sign_epi8(qy, sign[c])
                };
                let prod = _mm256_cvtepi32_ps(I::dot(u[c], y));
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(wd[c], xdr), prod, acc[r][c]);
            }
        }
    }
    for c in 0..C {
        let mut s = [0f32; 4];
        _mm_storeu_ps(s.as_mut_ptr(), summs[c]);
        for r in 0..R {
            let min_term = if W::HAS_MIN { s[r0 % 4 + r] } else { 0.0 };
            let v = hsum8(acc[r][c]);
            *p.out.add((r0 + r) * p.n + c0 + c) = if W::HAS_MIN { v + min_term } else { v };
        }
    }
}

/// Columns `c0..c1` of one row group: C-wide tiles, then single columns.
#[inline(always)]
unsafe fn row_group<W: Block32, X, I: Dot, const R: usize, const C: usize>(
    p: &Problem<W, X>,
    r0: usize,
    c0: usize,
    c1: usize,
) {
    let mut c = c0;
    while c + C <= c1 {
        tile::<W, X, I, R, C>(p, r0, c);
        c += C;
    }
    while c < c1 {
        tile::<W, X, I, R, 1>(p, r0, c);
        c += 1;
    }
}

/// One task: columns `c0..c1` for every row, four rows at a time. AVX2 has 16 vector
/// registers: 4 x 2 tiles for 4 rows; VNNI's EVEX encoding has 32: 4 x 4.
#[inline(always)]
unsafe fn task<W: Block32, X, I: Dot, const WIDE: usize>(p: &Problem<W, X>, c0: usize, c1: usize) {
    let mut r0 = 0;
    while r0 < p.m {
        match (p.m - r0).min(4) {
            4 => row_group::<W, X, I, 4, WIDE>(p, r0, c0, c1),
            3 => row_group::<W, X, I, 3, WIDE>(p, r0, c0, c1),
            2 => row_group::<W, X, I, 2, 4>(p, r0, c0, c1),
            _ => row_group::<W, X, I, 1, 4>(p, r0, c0, c1),
        }
        r0 += 4;
    }
}

unsafe fn task_avx2<W: Block32, X>(p: &Problem<W, X>, c0: usize, c1: usize) {
    task::<W, X, Avx2, 2>(p, c0, c1)
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn task_vnni<W: Block32, X>(p: &Problem<W, X>, c0: usize, c1: usize) {
    task::<W, X, Vnni, 4>(p, c0, c1)
}

/// The AVX2 and VNNI column tasks of a 32-value type.
pub(super) const fn kernels<W: Block32, X>() -> TaskKernels<Problem<W, X>> {
    (task_avx2::<W, X>, task_vnni::<W, X>)
}
