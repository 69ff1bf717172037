//! AVX-512 VNNI tiles for the K-quants: a super-block unpacked into four 512-bit registers of
//! two chunks each (64 values, the same 64 bytes of the Q8_K row), so a row's super-block
//! costs four `maddubs` + `vpdpwssd` pairs instead of the 256-bit tiles' eight. The 16 i32
//! lanes are folded to ggml's eight at the end (lane `j` plus lane `j + 8`: integer sums are
//! exact in any order), and the rest is `tiles_k.rs`' epilogue, so each output is exactly
//! `dots.rs`' product.

use std::arch::x86_64::*;

use super::kblocks::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use super::problem::Problem;
use super::tiles_k::{k4_scales_mins, BlockScales, KBlock, RowAcc};

/// Super-blocks ahead that a tile prefetches (a decode step streams the weights once; at
/// 144-210 bytes a block, two were too few to hide the memory's latency).
const PREFETCH_BLOCKS: usize = 4;

/// A super-block unpacked for the 512-bit row loop.
pub(super) struct Unpacked512 {
    /// Chunks `2t` (low 256 bits) and `2t + 1` (high) as unsigned bytes.
    q: [__m512i; 4],
    /// The scale of each i16 pair of `q[t]`.
    sc: [__m512i; 4],
    scales: BlockScales,
}

pub(super) trait KBlock512: KBlock {
    unsafe fn unpack512(b: *const Self, u: &mut Unpacked512);
}

/// i16 lanes 0-15 take `lo`, lanes 16-31 take `hi` (a `vpermw` index or shift count).
#[inline(always)]
unsafe fn halves16(lo: i16, hi: i16) -> __m512i {
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_set1_epi16(lo)),
        _mm256_set1_epi16(hi),
    )
}

/// The 32 bytes at `p` in both 256-bit halves.
#[inline(always)]
unsafe fn both_halves(p: *const u8) -> __m512i {
    _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i))
}

/// Q4_K/Q5_K: the low and high nibbles of 32 bytes (chunks `2t`, `2t + 1`), the scales.
#[inline(always)]
unsafe fn k4_unpack(qs: *const u8, packed: &[u8; 12], u: &mut Unpacked512) {
    let m4 = _mm512_set1_epi8(0x0F);
    let shift = halves16(0, 4);
    for t in 0..4 {
        let bits = both_halves(qs.add(32 * t));
        u.q[t] = _mm512_and_si512(_mm512_srlv_epi16(bits, shift), m4);
    }
    let sm = k4_scales_mins(packed);
    let sm512 = _mm512_castsi256_si512(sm);
    for (t, sc) in u.sc.iter_mut().enumerate() {
        *sc = _mm512_permutexvar_epi16(halves16(2 * t as i16, 2 * t as i16 + 1), sm512);
    }
    u.scales.mins = _mm256_extracti128_si256::<1>(sm);
}

impl KBlock512 for BlockQ4K {
    #[inline(always)]
    unsafe fn unpack512(b: *const Self, u: &mut Unpacked512) {
        k4_unpack((*b).qs.as_ptr(), &(*b).scales, u);
        u.scales.d = (*b).d.to_f32();
        u.scales.dmin = (*b).dmin.to_f32();
    }
}

impl KBlock512 for BlockQ5K {
    #[inline(always)]
    unsafe fn unpack512(b: *const Self, u: &mut Unpacked512) {
        k4_unpack((*b).qs.as_ptr(), &(*b).scales, u);
        // Chunk s's fifth bit is bit s of each qh byte: 16 added where it is set.
        let hbits = both_halves((*b).qh.as_ptr());
        for (t, q) in u.q.iter_mut().enumerate() {
            let bit = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_set1_epi8(1 << (2 * t))),
                _mm256_set1_epi8(1 << (2 * t + 1)),
            );
            let k = _mm512_test_epi8_mask(hbits, bit);
            *q = _mm512_mask_add_epi8(*q, k, *q, _mm512_set1_epi8(16));
        }
        u.scales.d = (*b).d.to_f32();
        u.scales.dmin = (*b).dmin.to_f32();
    }
}

impl KBlock512 for BlockQ6K {
    #[inline(always)]
    unsafe fn unpack512(b: *const Self, u: &mut Unpacked512) {
        let m15 = _mm512_set1_epi8(15);
        for j in 0..2 {
            // Chunks 4j, 4j + 1: the low nibbles of ql's 64 bytes, qh's bits 0-1 and 2-3;
            // chunks 4j + 2, 4j + 3: the high nibbles, qh's bits 4-5 and 6-7.
            let l = _mm512_loadu_si512((*b).ql.as_ptr().add(64 * j) as *const __m512i);
            let h = both_halves((*b).qh.as_ptr().add(32 * j));
            let mask = |lo: u8, hi: u8| {
                _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_set1_epi8(lo as i8)),
                    _mm256_set1_epi8(hi as i8),
                )
            };
            let h01 = _mm512_sllv_epi16(_mm512_and_si512(h, mask(3, 12)), halves16(4, 2));
            let h23 = _mm512_srlv_epi16(_mm512_and_si512(h, mask(48, 192)), halves16(0, 2));
            u.q[2 * j] = _mm512_or_si512(_mm512_and_si512(l, m15), h01);
            u.q[2 * j + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(l), m15), h23);
        }
        let s = _mm256_cvtepi8_epi16(_mm_loadu_si128((*b).scales.as_ptr() as *const __m128i));
        let s512 = _mm512_castsi256_si512(s);
        for (t, sc) in u.sc.iter_mut().enumerate() {
            // i16 lanes 8i..8i+8 take scale 4t + i (16 bytes of a chunk share one).
            let idx = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_set_m128i(
                    _mm_set1_epi16(4 * t as i16 + 1),
                    _mm_set1_epi16(4 * t as i16),
                )),
                _mm256_set_m128i(
                    _mm_set1_epi16(4 * t as i16 + 3),
                    _mm_set1_epi16(4 * t as i16 + 2),
                ),
            );
            *sc = _mm512_permutexvar_epi16(idx, s512);
        }
        u.scales.scales16 = s;
        u.scales.d = (*b).d.to_f32();
    }
}

/// Rows `r0..r0+R` of column `c`.
#[inline(always)]
unsafe fn tile<W: KBlock512, const R: usize>(p: &Problem<W, BlockQ8K>, r0: usize, c: usize) {
    let kb = p.kb;
    let w = p.w.add(c * kb);
    let x = p.x.add(r0 * kb);
    let mut rows = [RowAcc::new(); R];
    let mut u = Unpacked512 {
        q: [_mm512_setzero_si512(); 4],
        sc: [_mm512_setzero_si512(); 4],
        scales: BlockScales {
            d: 0.0,
            dmin: 0.0,
            mins: _mm_setzero_si128(),
            scales16: _mm256_setzero_si256(),
        },
    };
    let line = |b: usize, l: usize| (w.wrapping_add(b) as *const i8).wrapping_add(64 * l);
    for b in 0..kb {
        for l in 0..std::mem::size_of::<W>().div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(line(b + PREFETCH_BLOCKS, l));
        }
        W::unpack512(w.add(b), &mut u);
        for (r, row) in rows.iter_mut().enumerate() {
            let y = &*x.add(r * kb + b);
            // Two chains of two `vpdpwssd` rather than one of four (integer sums: any order).
            let mut s = [_mm512_setzero_si512(); 2];
            for t in 0..4 {
                let qy = _mm512_loadu_si512(y.qs.as_ptr().add(64 * t) as *const __m512i);
                s[t % 2] = _mm512_dpwssd_epi32(s[t % 2], u.sc[t], _mm512_maddubs_epi16(u.q[t], qy));
            }
            let s = _mm512_add_epi32(s[0], s[1]);
            let sumi =
                _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s));
            row.add::<W>(sumi, y, &u.scales);
        }
    }
    for (r, row) in rows.iter().enumerate() {
        *p.out.add((r0 + r) * p.n + c) = row.finish::<W>();
    }
}

/// One VNNI task: columns `c0..c1` for every row, eight rows per unpacked super-block.
///
/// # Safety
/// As [`Problem`]'s kernels; the machine runs AVX-512 VNNI (probed).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn task_vnni<W: KBlock512>(p: &Problem<W, BlockQ8K>, c0: usize, c1: usize) {
    let mut r0 = 0;
    while r0 < p.m {
        let rows = (p.m - r0).min(8);
        for c in c0..c1 {
            match rows {
                8 => tile::<W, 8>(p, r0, c),
                7 => tile::<W, 7>(p, r0, c),
                6 => tile::<W, 6>(p, r0, c),
                5 => tile::<W, 5>(p, r0, c),
                4 => tile::<W, 4>(p, r0, c),
                3 => tile::<W, 3>(p, r0, c),
                2 => tile::<W, 2>(p, r0, c),
                _ => tile::<W, 1>(p, r0, c),
            }
        }
        r0 += 8;
    }
}
