//! AVX-512 VNNI tiles for the 32-value types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) over their column
//! groups (`groups.rs`): one 512-bit register holds four columns' lanes of one half-block
//! (128-bit lane `j`: column `j`'s integer lanes 0-3, or 4-7), so a group's 128 values unpack
//! with one load, mask and shift, and one `vpdpbusd`, conversion, scale product and fused
//! multiply-add serve four columns. A decode step's single row is where this counts: the
//! unpacking was most of the work there.
//!
//! Each lane computes exactly ggml's AVX2 value (see `tiles32.rs`): unsigned values plus the
//! type's offset, a lane started at `-o * (its four activation values' sum)`, ggml's
//! conversion, `d_w * d_x` and fused multiply-add per lane, block after block; the min term
//! and the horizontal sum as there.

use std::arch::x86_64::*;

use super::avx2::hsum8;
use super::groups::GROUP;
use super::problem::Problem;
use super::tiles32::{column_lanes, prefetch_ahead, row_scale, x_qs, Group32};

/// Rows `r0..r0+R` x groups `g0..g0+T` (columns `4 g0..4 (g0 + T)`).
#[allow(clippy::needless_range_loop)] // rows and groups index parallel register arrays
#[inline(always)]
unsafe fn tile<W: Group32, X, const R: usize, const T: usize>(
    p: &Problem<W::Group, X>,
    r0: usize,
    g0: usize,
) {
    let kb = p.kb;
    let w: [*const W::Group; T] = std::array::from_fn(|t| p.w.add((g0 + t) * kb));
    // Each column's scale across its 128-bit lane.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mut lo = [[_mm512_setzero_ps(); T]; R];
    let mut hi = [[_mm512_setzero_ps(); T]; R];
    let mut summs = [[_mm_setzero_ps(); T]; R];
    for b in 0..kb {
        let mut v = [(_mm512_setzero_si512(), _mm512_setzero_si512()); T];
        let mut dw = [_mm512_setzero_ps(); T];
        let mut mw = [_mm_setzero_ps(); T];
        for t in 0..T {
            prefetch_ahead(w[t], b);
            let g = w[t].add(b);
            v[t] = W::values512(g);
            dw[t] = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(W::d4(g)));
            if W::HAS_MIN {
                mw[t] = W::m4(g);
            }
        }
        for r in 0..R {
            let row = r0 + r;
            let q = x_qs(p.x.add(row * kb + b));
            let yl = _mm512_broadcast_i32x4(_mm_loadu_si128(q as *const __m128i));
            let yh = _mm512_broadcast_i32x4(_mm_loadu_si128(q.add(16) as *const __m128i));
            let (cl, ch) = match W::OFFSET {
                0 => (_mm512_setzero_si512(), _mm512_setzero_si512()),
                _ => {
                    let c = p.xc.add(row * kb + b) as *const __m128i;
                    (
                        _mm512_broadcast_i32x4(_mm_loadu_si128(c)),
                        _mm512_broadcast_i32x4(_mm_loadu_si128(c.add(1))),
                    )
                }
            };
            let xd = _mm512_set1_ps(row_scale(p.xd, kb, row, b));
            let xs = match W::HAS_MIN {
                true => _mm_set1_ps(row_scale(p.xs, kb, row, b)),
                false => _mm_setzero_ps(),
            };
            for t in 0..T {
                let s = _mm512_mul_ps(dw[t], xd);
                let il = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(cl, v[t].0, yl));
                let ih = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(ch, v[t].1, yh));
                lo[r][t] = _mm512_fmadd_ps(s, il, lo[r][t]);
                hi[r][t] = _mm512_fmadd_ps(s, ih, hi[r][t]);
                if W::HAS_MIN {
                    summs[r][t] = _mm_fmadd_ps(mw[t], xs, summs[r][t]);
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            let (mut l, mut h, mut s) = ([0f32; 16], [0f32; 16], [0f32; 4]);
            _mm512_storeu_ps(l.as_mut_ptr(), lo[r][t]);
            _mm512_storeu_ps(h.as_mut_ptr(), hi[r][t]);
            _mm_storeu_ps(s.as_mut_ptr(), summs[r][t]);
            for j in 0..GROUP {
                let c = (g0 + t) * GROUP + j;
                if c < p.n {
                    let v = hsum8(column_lanes(&l, &h, j));
                    *p.out.add((r0 + r) * p.n + c) = if W::HAS_MIN { v + s[j] } else { v };
                }
            }
        }
    }
}

/// Groups `g0..g1` of rows `r0..r0+R`: T groups at a time, then one.
#[inline(always)]
unsafe fn row_group<W: Group32, X, const R: usize, const T: usize>(
    p: &Problem<W::Group, X>,
    r0: usize,
    g0: usize,
    g1: usize,
) {
    let mut g = g0;
    while g + T <= g1 {
        tile::<W, X, R, T>(p, r0, g);
        g += T;
    }
    while g < g1 {
        tile::<W, X, R, 1>(p, r0, g);
        g += 1;
    }
}

/// One VNNI task: columns `c0..c1` (`c0` a multiple of 4) for every row: eight rows x one
/// group at a time (16 accumulators of the 32 registers; each group unpacked once for eight
/// rows: 11% faster than four rows x two groups on a 120-row Q5_0 prompt, measured in
/// isolation), then four rows x two groups, a single row x four groups.
///
/// # Safety
/// As [`Problem`]'s kernels; the machine runs AVX-512 VNNI (the caller's probe says so).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn task_vnni<W: Group32, X>(p: &Problem<W::Group, X>, c0: usize, c1: usize) {
    let (g0, g1) = (c0 / GROUP, c1.div_ceil(GROUP));
    let mut r0 = 0;
    while r0 < p.m {
        let rows = match p.m - r0 {
            r if r >= 8 => 8,
            r => r.min(4),
        };
        match rows {
            8 => row_group::<W, X, 8, 1>(p, r0, g0, g1),
            4 => row_group::<W, X, 4, 2>(p, r0, g0, g1),
            3 => row_group::<W, X, 3, 2>(p, r0, g0, g1),
            2 => row_group::<W, X, 2, 3>(p, r0, g0, g1),
            _ => row_group::<W, X, 1, 4>(p, r0, g0, g1),
        }
        r0 += rows;
    }
}
