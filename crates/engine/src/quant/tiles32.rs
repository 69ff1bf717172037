//! Register tiles for the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) over their
//! column groups (`groups.rs`): how each type's four columns unpack, and the AVX2 kernel (the
//! AVX-512 VNNI one is `tiles32_512.rs`). Each output element is exactly `dots.rs`' product:
//! the same eight integer lanes per block, the same `d_w * d_x` and fused multiply-add in
//! block order, the min term apart, the same horizontal sum.
//!
//! Values unpack *unsigned*: a signed type's `w + o` (`o` = 8 for Q4_0, 16 for Q5_0, 128 for
//! Q8_0 on VNNI), and a lane adds `-o * (its four activation values' sum)` (`Problem::xc`), so
//! each integer lane is the exact integer of ggml's sign-folded `maddubs`/`madd` pair (integer
//! sums do not depend on their order). Q8_0 on AVX2 keeps ggml's sign folding: `maddubs` of
//! `w + 128` would saturate.

use std::arch::x86_64::*;

use super::avx2::{bytes_from_bits_32, hsum8, Avx2, Dot};
use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use super::groups::{Grouped, GROUP};
use super::problem::Problem;

/// Blocks ahead that a tile asks the memory system for: a decode step streams every weight
/// from DRAM once, and the hardware prefetcher alone left the tiles waiting on it.
pub(super) const PREFETCH_BLOCKS: usize = 8;

/// Prefetches group-block `b + PREFETCH_BLOCKS` of a column group (two cache lines: a
/// group-block is 72..136 bytes). Prefetching past the end is harmless.
#[inline(always)]
pub(super) unsafe fn prefetch_ahead<T>(w: *const T, b: usize) {
    let p = w.wrapping_add(b + PREFETCH_BLOCKS) as *const i8;
    _mm_prefetch::<_MM_HINT_T0>(p);
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
}

/// An activation block's 32 values: Q8_0 and Q8_1 both end with them.
#[inline(always)]
pub(super) unsafe fn x_qs<X>(blk: *const X) -> *const u8 {
    (blk as *const u8).add(std::mem::size_of::<X>() - 32)
}

/// Column `j`'s first byte in a group field of four 16-byte columns: a pointer derived from
/// the whole field, so loads of two columns stay within what it points into.
#[inline(always)]
unsafe fn column_bytes<T>(field: *const [[T; 16]; 4], j: usize) -> *const u8 {
    (field as *const u8).add(16 * j)
}

/// Four f16 at `p` as `[f32; 4]` (exact conversions).
#[inline(always)]
unsafe fn four_f16(p: *const half::f16) -> __m128 {
    _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i))
}

/// A 32-value type's column group as the tiles read it.
pub(super) trait Group32: Grouped {
    /// Unsigned values with a min term (paired with Q8_1's `s`).
    const HAS_MIN: bool;
    /// What the unsigned values carry above the signed ones (0 for the min types).
    const OFFSET: u8;
    /// AVX2 multiplies signed values, sign-folded (Q8_0).
    const SIGNED_AVX2: bool = false;
    /// Columns `2h` and `2h + 1`: their values 0-15 (16 bytes each), then their values 16-31
    /// (unsigned plus `OFFSET`, or signed where `SIGNED_AVX2`).
    unsafe fn values256(g: *const Self::Group, h: usize) -> (__m256i, __m256i);
    /// The four columns' values 0-15 (128-bit lane `j`: column `j`), then 16-31, unsigned plus
    /// `OFFSET` (AVX-512BW code, called only from AVX-512 tasks).
    unsafe fn values512(g: *const Self::Group) -> (__m512i, __m512i);
    /// The four columns' scales `d`.
    unsafe fn d4(g: *const Self::Group) -> __m128;
    /// The four columns' mins `m` (the min types).
    unsafe fn m4(_g: *const Self::Group) -> __m128 {
        _mm_setzero_ps()
    }
}

/// 32 bytes of packed nibbles (two columns) as their low nibbles and their high ones.
#[inline(always)]
unsafe fn nibbles256(qs: *const u8) -> (__m256i, __m256i) {
    let q = _mm256_loadu_si256(qs as *const __m256i);
    let m = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(q, m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(q), m),
    )
}

/// 64 bytes of packed nibbles (four columns) as their low nibbles and their high ones.
#[inline(always)]
unsafe fn nibbles512(qs: *const u8) -> (__m512i, __m512i) {
    let q = _mm512_loadu_si512(qs as *const __m512i);
    let m = _mm512_set1_epi8(0x0F);
    (
        _mm512_and_si512(q, m),
        _mm512_and_si512(_mm512_srli_epi16::<4>(q), m),
    )
}

/// 0x10 added to the bytes whose bit in the 32 bits at `qh` is set (AVX2).
#[inline(always)]
unsafe fn high_bits256(q: __m256i, qh: *const u64, h: usize) -> __m256i {
    let bits = bytes_from_bits_32((qh as *const u8).add(4 * h));
    _mm256_or_si256(q, _mm256_and_si256(bits, _mm256_set1_epi8(0x10)))
}

/// 0x10 added to the bytes whose bit in the mask at `qh` is set (AVX-512BW).
#[inline(always)]
unsafe fn high_bits512(q: __m512i, qh: *const u64) -> __m512i {
    _mm512_mask_add_epi8(q, std::ptr::read_unaligned(qh), q, _mm512_set1_epi8(0x10))
}

/// The methods every nibble type shares: scales, and mins where it has them.
macro_rules! scales {
    (true) => {
        scales!(false);
        #[inline(always)]
        unsafe fn m4(g: *const Self::Group) -> __m128 {
            four_f16((*g).m.as_ptr())
        }
    };
    (false) => {
        #[inline(always)]
        unsafe fn d4(g: *const Self::Group) -> __m128 {
            four_f16((*g).d.as_ptr())
        }
    };
}

/// Q4_0, Q4_1: the nibbles alone.
macro_rules! group_4bit {
    ($W:ty, $min:tt, $offset:expr) => {
        impl Group32 for $W {
            const HAS_MIN: bool = $min;
            const OFFSET: u8 = $offset;
            #[inline(always)]
            unsafe fn values256(g: *const Self::Group, h: usize) -> (__m256i, __m256i) {
                nibbles256(column_bytes(std::ptr::addr_of!((*g).qs), 2 * h))
            }
            #[inline(always)]
            unsafe fn values512(g: *const Self::Group) -> (__m512i, __m512i) {
                nibbles512(std::ptr::addr_of!((*g).qs) as *const u8)
            }
            scales!($min);
        }
    };
}

/// Q5_0, Q5_1: the nibbles plus 16 where a value's high bit is set.
macro_rules! group_5bit {
    ($W:ty, $min:tt, $offset:expr) => {
        impl Group32 for $W {
            const HAS_MIN: bool = $min;
            const OFFSET: u8 = $offset;
            #[inline(always)]
            unsafe fn values256(g: *const Self::Group, h: usize) -> (__m256i, __m256i) {
                let (lo, hi) = nibbles256(column_bytes(std::ptr::addr_of!((*g).qs), 2 * h));
                (
                    high_bits256(lo, std::ptr::addr_of!((*g).qh_lo), h),
                    high_bits256(hi, std::ptr::addr_of!((*g).qh_hi), h),
                )
            }
            #[inline(always)]
            unsafe fn values512(g: *const Self::Group) -> (__m512i, __m512i) {
                let (lo, hi) = nibbles512(std::ptr::addr_of!((*g).qs) as *const u8);
                (
                    high_bits512(lo, std::ptr::addr_of!((*g).qh_lo)),
                    high_bits512(hi, std::ptr::addr_of!((*g).qh_hi)),
                )
            }
            scales!($min);
        }
    };
}

group_4bit!(BlockQ4_0, false, 8);
group_4bit!(BlockQ4_1, true, 0);
group_5bit!(BlockQ5_0, false, 16);
group_5bit!(BlockQ5_1, true, 0);

impl Group32 for BlockQ8_0 {
    const HAS_MIN: bool = false;
    const OFFSET: u8 = 128;
    const SIGNED_AVX2: bool = true;
    #[inline(always)]
    unsafe fn values256(g: *const Self::Group, h: usize) -> (__m256i, __m256i) {
        (
            _mm256_loadu_si256(column_bytes(std::ptr::addr_of!((*g).lo), 2 * h) as *const __m256i),
            _mm256_loadu_si256(column_bytes(std::ptr::addr_of!((*g).hi), 2 * h) as *const __m256i),
        )
    }
    #[inline(always)]
    unsafe fn values512(g: *const Self::Group) -> (__m512i, __m512i) {
        let flip = _mm512_set1_epi8(-128);
        (
            _mm512_xor_si512(
                _mm512_loadu_si512(std::ptr::addr_of!((*g).lo) as *const __m512i),
                flip,
            ),
            _mm512_xor_si512(
                _mm512_loadu_si512(std::ptr::addr_of!((*g).hi) as *const __m512i),
                flip,
            ),
        )
    }
    #[inline(always)]
    unsafe fn d4(g: *const Self::Group) -> __m128 {
        four_f16((*g).d.as_ptr())
    }
}

/// Row `r`'s activation scale `d` (or `s`) in block `b`, from the lanes of four rows.
#[inline(always)]
pub(super) unsafe fn row_scale(v: *const [f32; 4], kb: usize, r: usize, b: usize) -> f32 {
    (*v.add(r / 4 * kb + b))[r % 4]
}

/// The eight lanes `[lo; hi]` of one column: 128-bit lane `j` of each.
#[inline(always)]
pub(super) unsafe fn column_lanes(lo: &[f32], hi: &[f32], j: usize) -> __m256 {
    _mm256_set_m128(
        _mm_loadu_ps(hi.as_ptr().add(4 * j)),
        _mm_loadu_ps(lo.as_ptr().add(4 * j)),
    )
}

/// Rows `r0..r0+R` x the two columns `c0, c0 + 1` (`c0` even): each weight block unpacked
/// once for the R rows, each row's activation halves broadcast to both columns.
#[allow(clippy::needless_range_loop)] // rows index parallel register arrays
#[inline(always)]
unsafe fn tile<W: Group32, X, const R: usize>(p: &Problem<W::Group, X>, r0: usize, c0: usize) {
    let kb = p.kb;
    let h = c0 % GROUP / 2;
    let w = p.w.add(c0 / GROUP * kb);
    let pick = _mm256_setr_epi32(
        2 * h as i32,
        2 * h as i32,
        2 * h as i32,
        2 * h as i32,
        2 * h as i32 + 1,
        2 * h as i32 + 1,
        2 * h as i32 + 1,
        2 * h as i32 + 1,
    );
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    let mut summs = [_mm_setzero_ps(); R];
    for b in 0..kb {
        prefetch_ahead(w, b);
        let g = w.add(b);
        let (vl, vh) = W::values256(g, h);
        let (ul, uh) = match W::SIGNED_AVX2 {
            true => (_mm256_sign_epi8(vl, vl), _mm256_sign_epi8(vh, vh)),
            false => (vl, vh),
        };
        let dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(W::d4(g)), pick);
        let mw = match (W::HAS_MIN, h) {
            (false, _) => _mm_setzero_ps(),
            (true, 0) => W::m4(g),
            (true, _) => {
                let m = W::m4(g);
                _mm_movehl_ps(m, m)
            }
        };
        for r in 0..R {
            let row = r0 + r;
            let q = x_qs(p.x.add(row * kb + b));
            let yl = _mm256_broadcastsi128_si256(_mm_loadu_si128(q as *const __m128i));
            let yh = _mm256_broadcastsi128_si256(_mm_loadu_si128(q.add(16) as *const __m128i));
            let (il, ih) = if W::SIGNED_AVX2 {
                (
                    Avx2::dot(ul, _mm256_sign_epi8(yl, vl)),
                    Avx2::dot(uh, _mm256_sign_epi8(yh, vh)),
                )
            } else if W::OFFSET != 0 {
                let c = p.xc.add(row * kb + b) as *const __m128i;
                (
                    _mm256_add_epi32(
                        Avx2::dot(vl, yl),
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(c)),
                    ),
                    _mm256_add_epi32(
                        Avx2::dot(vh, yh),
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(c.add(1))),
                    ),
                )
            } else {
                (Avx2::dot(vl, yl), Avx2::dot(vh, yh))
            };
            let s = _mm256_mul_ps(dw, _mm256_set1_ps(row_scale(p.xd, kb, row, b)));
            lo[r] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(il), lo[r]);
            hi[r] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(ih), hi[r]);
            if W::HAS_MIN {
                let xs = _mm_set1_ps(row_scale(p.xs, kb, row, b));
                summs[r] = _mm_fmadd_ps(mw, xs, summs[r]);
            }
        }
    }
    for r in 0..R {
        let (mut l, mut hh, mut s) = ([0f32; 8], [0f32; 8], [0f32; 4]);
        _mm256_storeu_ps(l.as_mut_ptr(), lo[r]);
        _mm256_storeu_ps(hh.as_mut_ptr(), hi[r]);
        _mm_storeu_ps(s.as_mut_ptr(), summs[r]);
        for j in 0..2 {
            let c = c0 + j;
            if c < p.n {
                let v = hsum8(column_lanes(&l, &hh, j));
                *p.out.add((r0 + r) * p.n + c) = if W::HAS_MIN { v + s[j] } else { v };
            }
        }
    }
}

/// One AVX2 task: columns `c0..c1` (`c0` a multiple of 4) for every row, two columns and up
/// to four rows at a time.
pub(super) unsafe fn task_avx2<W: Group32, X>(p: &Problem<W::Group, X>, c0: usize, c1: usize) {
    let mut r0 = 0;
    while r0 < p.m {
        let rows = (p.m - r0).min(4);
        let mut c = c0;
        while c < c1 {
            match rows {
                4 => tile::<W, X, 4>(p, r0, c),
                3 => tile::<W, X, 3>(p, r0, c),
                2 => tile::<W, X, 2>(p, r0, c),
                _ => tile::<W, X, 1>(p, r0, c),
            }
            c += 2;
        }
        r0 += rows;
    }
}
