//! AVX-512 VNNI tiles for the 32-value types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) over pairs of
//! activation rows: one 512-bit register holds rows `r` and `r + 1` of a block (lanes 0-7 and
//! 8-15), so one `vpdpbusd`, conversion, scale product and fused multiply-add serve two rows
//! (the 256-bit tiles of `tiles32.rs` spend five instructions on each row).
//!
//! Each lane still computes exactly ggml's AVX2 value: a signed weight is unpacked unsigned
//! (`w + o`, `o` = 8, 16 or 128) and its lane starts from `-o * (the lane's four activation
//! values' sum)`, so the integer lane is the same exact integer as ggml's sign-folded
//! `maddubs`/`madd` pair; the conversion, `d_w * d_x` and the fused multiply-add are ggml's
//! per lane, block after block; the min term and the horizontal sum as in `tiles32.rs`.

use std::arch::x86_64::*;

use super::avx2::hsum8;
use super::columns::COLUMN_GROUP as G;
use super::problem::{ActScales, PairBlock, Problem};
use super::tiles32::Block32;

/// The activation pairs of a problem: `[m / 2, kb]` blocks (a last odd row is not paired).
///
/// # Safety
/// `x` holds `m * kb` blocks; the machine runs AVX-512 VNNI (the caller's probe says so).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn pair_blocks<X: ActScales>(
    x: &[X],
    m: usize,
    kb: usize,
    offset: u8,
) -> Vec<PairBlock> {
    let mut out = Vec::with_capacity(m / 2 * kb);
    let ofs = _mm512_set1_epi8(offset as i8);
    for pr in 0..m / 2 {
        for b in 0..kb {
            let (x0, x1) = (&x[2 * pr * kb + b], &x[(2 * pr + 1) * kb + b]);
            let q0 = _mm256_loadu_si256(x_qs(x0) as *const __m256i);
            let q1 = _mm256_loadu_si256(x_qs(x1) as *const __m256i);
            let qs = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1);
            let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ofs, qs);
            let corr = _mm512_sub_epi32(_mm512_setzero_si512(), sums);
            let d = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(x0.d()))),
                _mm256_castps_pd(_mm256_set1_ps(x1.d())),
            ));
            let mut blk = PairBlock {
                qs: [0; 64],
                corr: [0; 16],
                d: [0.0; 16],
            };
            _mm512_storeu_si512(blk.qs.as_mut_ptr() as *mut __m512i, qs);
            _mm512_storeu_si512(blk.corr.as_mut_ptr() as *mut __m512i, corr);
            _mm512_storeu_ps(blk.d.as_mut_ptr(), d);
            out.push(blk);
        }
    }
    out
}

/// An activation block's 32 values: Q8_0 and Q8_1 both end with them.
#[inline(always)]
unsafe fn x_qs<X>(blk: *const X) -> *const u8 {
    (blk as *const u8).add(std::mem::size_of::<X>() - 32)
}

/// Column `c`'s first block in the grouped layout.
#[inline(always)]
unsafe fn column<T>(w: *const T, kb: usize, c: usize) -> *const T {
    w.add(c / G * kb * G + c % G)
}

/// Pairs `pr..pr+P` (rows `2pr..2pr+2P`, `2pr` a multiple of 8, P at most 8) x columns
/// `c0..c0+C`.
#[allow(clippy::needless_range_loop)] // pairs and columns index parallel register arrays
#[inline(always)]
unsafe fn pair_tile<W: Block32, X, const P: usize, const C: usize>(
    p: &Problem<W, X>,
    pr: usize,
    c0: usize,
) {
    let kb = p.kb;
    let r0 = 2 * pr;
    let w: [*const W; C] = std::array::from_fn(|c| column(p.w, kb, c0 + c));
    let panel = p.pairs.add(pr * kb);
    // The min term: rows r0..r0+2P as lanes of four (`by_four`).
    let xs = p.xs.wrapping_add(r0 / 4 * kb);
    let mut acc = [[_mm512_setzero_ps(); C]; P];
    let mut summs = [[_mm_setzero_ps(); 4]; C];
    for b in 0..kb {
        let mut u = [_mm512_setzero_si512(); C];
        let mut wd = [_mm512_setzero_ps(); C];
        _mm_prefetch::<_MM_HINT_T0>((w[0].wrapping_add((b + 16) * G)) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(
            (w[0].wrapping_add((b + 16) * G) as *const i8).wrapping_add(64),
        );
        for c in 0..C {
            let (q, dm) = W::unpack_unsigned(w[c].add(b * G));
            u[c] = _mm512_broadcast_i64x4(q);
            wd[c] = _mm512_broadcastss_ps(dm);
            if W::HAS_MIN {
                let m = _mm_shuffle_ps::<0b0101_0101>(dm, dm);
                for g in 0..(2 * P).div_ceil(4) {
                    let s4 = _mm_loadu_ps((*xs.add(g * kb + b)).as_ptr());
                    summs[c][g] = _mm_fmadd_ps(m, s4, summs[c][g]);
                }
            }
        }
        for q in 0..P {
            let blk = &*panel.add(q * kb + b);
            let y = _mm512_load_si512(blk.qs.as_ptr() as *const __m512i);
            let start = match W::HAS_MIN {
                true => _mm512_setzero_si512(),
                false => _mm512_load_si512(blk.corr.as_ptr() as *const __m512i),
            };
            let xd = _mm512_load_ps(blk.d.as_ptr());
            for c in 0..C {
                let prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u[c], y));
                acc[q][c] = _mm512_fmadd_ps(_mm512_mul_ps(wd[c], xd), prod, acc[q][c]);
            }
        }
    }
    for c in 0..C {
        let mut s = [0f32; 16];
        for (g, sg) in summs[c].iter().enumerate() {
            _mm_storeu_ps(s.as_mut_ptr().add(4 * g), *sg);
        }
        for q in 0..P {
            let lo = hsum8(_mm512_castps512_ps256(acc[q][c]));
            let hi = hsum8(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(acc[q][c]),
            )));
            for (i, v) in [lo, hi].into_iter().enumerate() {
                let r = 2 * q + i;
                let v = if W::HAS_MIN { v + s[r] } else { v };
                *p.out.add((r0 + r) * p.n + c0 + c) = v;
            }
        }
    }
}

/// Columns `c0..c1` of pairs `pr..pr+P`: C-wide tiles, then single columns.
#[inline(always)]
unsafe fn pair_group<W: Block32, X, const P: usize, const C: usize>(
    p: &Problem<W, X>,
    pr: usize,
    c0: usize,
    c1: usize,
) {
    let mut c = c0;
    while c + C <= c1 {
        pair_tile::<W, X, P, C>(p, pr, c);
        c += C;
    }
    while c < c1 {
        pair_tile::<W, X, P, 1>(p, pr, c);
        c += 1;
    }
}

/// One unpaired row `r` x columns `c0..c0+C` (a decode step's single row, or a last odd
/// row): the same unsigned unpacking and corrected `vpdpbusd` in 256-bit lanes.
#[allow(clippy::needless_range_loop)] // columns index parallel register arrays
#[inline(always)]
unsafe fn single_tile<W: Block32, X: ActScales, const C: usize>(
    p: &Problem<W, X>,
    r: usize,
    c0: usize,
) {
    let kb = p.kb;
    let w: [*const W; C] = std::array::from_fn(|c| column(p.w, kb, c0 + c));
    let x = p.x.add(r * kb);
    let ofs = _mm256_set1_epi8(W::OFFSET as i8);
    let mut acc = [_mm256_setzero_ps(); C];
    let mut summs = [0f32; C];
    for b in 0..kb {
        _mm_prefetch::<_MM_HINT_T0>((w[0].wrapping_add((b + 16) * G)) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(
            (w[0].wrapping_add((b + 16) * G) as *const i8).wrapping_add(64),
        );
        let xb = &*x.add(b);
        let y = _mm256_loadu_si256(x_qs(xb) as *const __m256i);
        let start = match W::HAS_MIN {
            true => _mm256_setzero_si256(),
            false => _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), ofs, y),
            ),
        };
        let xd = _mm256_set1_ps(xb.d());
        for c in 0..C {
            let (q, dm) = W::unpack_unsigned(w[c].add(b * G));
            if W::HAS_MIN {
                summs[c] = _mm_cvtss_f32(_mm_movehdup_ps(dm)).mul_add(xb.s(), summs[c]);
            }
            let prod = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, q, y));
            let wd = _mm256_broadcastss_ps(dm);
            acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(wd, xd), prod, acc[c]);
        }
    }
    for c in 0..C {
        let v = hsum8(acc[c]);
        *p.out.add(r * p.n + c0 + c) = if W::HAS_MIN { v + summs[c] } else { v };
    }
}

/// Columns `c0..c1` of the unpaired row `r`.
#[inline(always)]
unsafe fn single_row<W: Block32, X: ActScales>(p: &Problem<W, X>, r: usize, c0: usize, c1: usize) {
    let mut c = c0;
    while c + 4 <= c1 {
        single_tile::<W, X, 4>(p, r, c);
        c += 4;
    }
    while c < c1 {
        single_tile::<W, X, 1>(p, r, c);
        c += 1;
    }
}

/// One VNNI task over the pairs: sixteen rows at a time (each weight block unpacked once for
/// them), then eight or fewer, then a last odd row.
///
/// # Safety
/// As [`Problem`]'s kernels, with `p.pairs` built by [`pair_blocks`] for `W`'s offset.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn task_pairs<W: Block32, X: ActScales>(p: &Problem<W, X>, c0: usize, c1: usize) {
    let np = p.m / 2;
    let mut pr = 0;
    while pr < np {
        let k = if np - pr >= 8 { 8 } else { (np - pr).min(4) };
        match k {
            8 => pair_group::<W, X, 8, 2>(p, pr, c0, c1),
            4 => pair_group::<W, X, 4, 3>(p, pr, c0, c1),
            3 => pair_group::<W, X, 3, 4>(p, pr, c0, c1),
            2 => pair_group::<W, X, 2, 4>(p, pr, c0, c1),
            _ => pair_group::<W, X, 1, 4>(p, pr, c0, c1),
        }
        pr += k;
    }
    if p.m % 2 == 1 {
        single_row(p, p.m - 1, c0, c1);
    }
}
