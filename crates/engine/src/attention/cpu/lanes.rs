//! The vector lanes of the llama.cpp-order kernel: 8 keys' scores at once, and the values'
//! 16-lane chains, each lane the same sequential sum as llama.cpp's, for up to four query
//! heads of a KV group at once (AVX2 where built for it; otherwise the scalar forms of
//! [`crate::ops::ggml_arith`]).

use half::f16;

/// Most query heads that one pass of the lanes below serves: each K or V vector is loaded
/// (and converted) once for all of them.
#[cfg_attr(not(x86_v3), allow(dead_code))] // the portable build's paths are per head
pub(super) const MAX_HEADS: usize = 4;

/// Dims `d0..d0 + 8 W` of `H` heads' outputs (`p: [H, n]` probabilities, `out: [H, hd]`):
/// each dim the f16 dot product of a head's probabilities with V's column over the positions,
/// in llama.cpp's lanes (a lane's chain of positions held in `H x W` registers, each V vector
/// converted once for the `H` heads) and [`crate::ops::ggml_arith::reduce16`]'s tree, taken
/// in the tree's order so that few partial sums are live. A chain starts from its first
/// product (llama.cpp's start from +0, which differs only in the sign of an all-zero sum; a
/// lane no position reaches is +0) and adds the others by FMA, which is llama.cpp's
/// multiply-then-add here: a product of two f16 values (a probability rounded to f16, a V
/// entry) is exact in f32.
#[cfg(x86_v3)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn values_lanes_avx2<const H: usize, const W: usize>(
    p: &[f32],
    rows: &[usize],
    v: &[f16],
    d0: usize,
    prompt: bool,
    out: &mut [f32],
    hd: usize,
) {
    use std::arch::x86_64::*;
    let step = if prompt { 16 } else { 64 };
    let src = (p.as_ptr(), rows, v.as_ptr().add(d0), step);
    let a = add_hw(value_t6::<H, W>(src, 0), value_t6::<H, W>(src, 2));
    let r = add_hw(
        a,
        add_hw(value_t6::<H, W>(src, 1), value_t6::<H, W>(src, 3)),
    );
    let op = out.as_mut_ptr().add(d0);
    for (h, rh) in r.iter().enumerate() {
        for (w, x) in rh.iter().enumerate() {
            _mm256_storeu_ps(op.add(h * hd + 8 * w), *x);
        }
    }
}

#[cfg(x86_v3)]
type Acc<const H: usize, const W: usize> = [[std::arch::x86_64::__m256; W]; H];

/// `t6[i] = (s[i + 12] + s[i + 4]) + (s[i + 8] + s[i])` of the tree's 16 inputs.
#[cfg(x86_v3)]
#[inline(always)]
unsafe fn value_t6<const H: usize, const W: usize>(src: ValueSource<'_>, i: usize) -> Acc<H, W> {
    let a = add_hw(
        value_input::<H, W>(src, i + 12),
        value_input::<H, W>(src, i + 4),
    );
    add_hw(
        a,
        add_hw(value_input::<H, W>(src, i + 8), value_input::<H, W>(src, i)),
    )
}

/// Input `l` of the tree: lane `l`'s chain in prompt order (16 lanes); in decode order (64
/// lanes) `(c[l] + c[32 + l]) + (c[16 + l] + c[48 + l])`.
#[cfg(x86_v3)]
#[inline(always)]
unsafe fn value_input<const H: usize, const W: usize>(src: ValueSource<'_>, l: usize) -> Acc<H, W> {
    if src.3 == 16 {
        value_chain::<H, W>(src, l)
    } else {
        let a = add_hw(
            value_chain::<H, W>(src, l),
            value_chain::<H, W>(src, 32 + l),
        );
        add_hw(
            a,
            add_hw(
                value_chain::<H, W>(src, 16 + l),
                value_chain::<H, W>(src, 48 + l),
            ),
        )
    }
}

#[cfg(x86_v3)]
#[inline(always)]
unsafe fn add_hw<const H: usize, const W: usize>(a: Acc<H, W>, b: Acc<H, W>) -> Acc<H, W> {
    use std::arch::x86_64::*;
    let mut r = a;
    for h in 0..H {
        for w in 0..W {
            r[h][w] = _mm256_add_ps(a[h][w], b[h][w]);
        }
    }
    r
}

/// What a value chain reads: probabilities `[H, n]`, each position's V row, the V cache from
/// the pass's first dim, and the lane width (16 or 64).
#[cfg(x86_v3)]
type ValueSource<'a> = (*const f32, &'a [usize], *const f16, usize);

/// One lane's chain over positions `lane, lane + step, ...` for `H` heads and `8 W` dims.
#[cfg(x86_v3)]
#[inline(always)]
#[allow(clippy::needless_range_loop)] // acc[h][w]: two indices read plainer than zips
unsafe fn value_chain<const H: usize, const W: usize>(
    (pp, rows, vp, step): ValueSource<'_>,
    lane: usize,
) -> [[std::arch::x86_64::__m256; W]; H] {
    use std::arch::x86_64::*;
    let n = rows.len();
    let mut acc = [[_mm256_setzero_ps(); W]; H];
    if lane >= n {
        return acc;
    }
    let mut pv = [_mm256_setzero_ps(); H];
    for (h, x) in pv.iter_mut().enumerate() {
        *x = _mm256_set1_ps(*pp.add(h * n + lane));
    }
    let row = vp.add(*rows.get_unchecked(lane));
    for w in 0..W {
        let x = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * w) as *const __m128i));
        for h in 0..H {
            acc[h][w] = _mm256_mul_ps(x, pv[h]);
        }
    }
    let mut i = lane + step;
    while i < n {
        for (h, x) in pv.iter_mut().enumerate() {
            *x = _mm256_set1_ps(*pp.add(h * n + i));
        }
        let row = vp.add(*rows.get_unchecked(i));
        for w in 0..W {
            let x = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * w) as *const __m128i));
            for h in 0..H {
                acc[h][w] = _mm256_fmadd_ps(x, pv[h], acc[h][w]);
            }
        }
        i += step;
    }
    acc
}

/// Unscaled scores of `heads` query heads (`q: [heads, head_dim]`) with the first `len` keys
/// of a block of the f16 cache `kb: [head_dim, block_size]`: `dot_f16(q_h, key j)` (or
/// `dot_f16_tiled` in prompt order) into `p[h * n + start + j]`. Eight keys per pass as
/// vector lanes, up to [`MAX_HEADS`] heads sharing each key load, when the block size is a
/// multiple of 8 and the head dimension whole SIMD steps (64 wide in decode order, 16 in
/// prompt order). `q` must hold f16 values (rounded as llama.cpp converts q to the cache's
/// type): the lanes' FMAs equal llama.cpp's multiply-then-add only because a product of two
/// f16 values is exact in f32.
#[allow(clippy::too_many_arguments)]
pub(super) fn key_scores(
    q: &[f32],
    hd: usize,
    (kb, bs): (&[f16], usize),
    p: &mut [f32],
    (n, start, len): (usize, usize, usize),
    prompt: bool,
) {
    let heads = q.len() / hd;
    assert!(p.len() >= heads * n && start + len <= n && len <= bs && kb.len() >= hd * bs);
    debug_assert!(q
        .iter()
        .all(|&x| f16::from_f32(x).to_f32() == x || x.is_nan()));
    #[cfg(x86_v3)]
    if bs.is_multiple_of(8) && hd.is_multiple_of(if prompt { 16 } else { 64 }) {
        for h0 in (0..heads).step_by(MAX_HEADS) {
            let qh = &q[h0 * hd..(h0 + MAX_HEADS).min(heads) * hd];
            let out = (&mut *p, h0, n, start, len);
            // SAFETY: AVX2 and FMA are in the build's target; every load is inside `kb`
            // (j + 8 <= bs since len <= bs and bs is a multiple of 8; kb holds hd x bs) and
            // `qh` (whole heads).
            unsafe {
                match (qh.len() / hd, prompt) {
                    (1, false) => scores_avx2::<false, 1>(qh, hd, (kb, bs), out),
                    (2, false) => scores_avx2::<false, 2>(qh, hd, (kb, bs), out),
                    (3, false) => scores_avx2::<false, 3>(qh, hd, (kb, bs), out),
                    (_, false) => scores_avx2::<false, 4>(qh, hd, (kb, bs), out),
                    (1, true) => scores_avx2::<true, 1>(qh, hd, (kb, bs), out),
                    (2, true) => scores_avx2::<true, 2>(qh, hd, (kb, bs), out),
                    (3, true) => scores_avx2::<true, 3>(qh, hd, (kb, bs), out),
                    (_, true) => scores_avx2::<true, 4>(qh, hd, (kb, bs), out),
                }
            }
        }
        return;
    }
    // The portable build, or shapes without whole SIMD steps: the same arithmetic per key.
    let mut k = vec![0f32; hd];
    for j in 0..len {
        for (d, kd) in k.iter_mut().enumerate() {
            *kd = kb[d * bs + j].to_f32();
        }
        for h in 0..heads {
            let qh = &q[h * hd..][..hd];
            p[h * n + start + j] = if prompt {
                crate::ops::ggml_arith::dot_f16_tiled(qh, &k)
            } else {
                crate::ops::ggml_arith::dot_f16(qh, &k)
            };
        }
    }
}

/// The scores of `H` heads (from head `h0`) with a block's first `len` keys, eight at a time,
/// into `p[(h0 + h) * n + start..]`.
#[cfg(x86_v3)]
#[inline(always)]
unsafe fn scores_avx2<const PROMPT: bool, const H: usize>(
    q: &[f32],
    hd: usize,
    (kb, bs): (&[f16], usize),
    (p, h0, n, start, len): (&mut [f32], usize, usize, usize, usize),
) {
    for j in (0..len).step_by(8) {
        let s = dot8_avx2::<PROMPT, H>(q, hd, (kb, bs, j));
        let m = (len - j).min(8);
        for (h, lanes) in s.iter().enumerate() {
            p[(h0 + h) * n + start + j..][..m].copy_from_slice(&lanes[..m]);
        }
    }
}

#[cfg(x86_v3)]
pub(super) type Lanes = [f32; 8];

/// Eight keys of a block of the f16 cache `[head_dim, block_size]`: the block, its size, and
/// the first key.
#[cfg(x86_v3)]
pub(super) type KeyLanes<'a> = (&'a [f16], usize, usize);

/// `dot_f16` (`PROMPT`: `dot_f16_tiled`) of each of `H` heads (`q: [H, hd]`, hd a whole
/// number of 64-wide (16) steps) with keys `j..j + 8` of `kb` in AVX2 vectors, one key per
/// lane: the same lanes and tree as llama.cpp, each key vector loaded once for the `H` heads.
/// A lane's chain starts from its first product and adds the next by FMA (exact products of
/// f16 values: llama.cpp's multiply-then-add; its chains start from +0, which differs only in
/// the sign of an all-zero sum, which no score can tell).
///
/// # Safety
/// AVX2, FMA and F16C; `j + 8 <= bs`, `kb.len() >= hd * bs`, `q.len() >= H * hd`, `hd` a
/// positive multiple of the lane width (64, or 16 in prompt order).
#[cfg(x86_v3)]
#[inline(always)]
unsafe fn dot8_avx2<const PROMPT: bool, const H: usize>(
    q: &[f32],
    hd: usize,
    (kb, bs, j): KeyLanes<'_>,
) -> [Lanes; H] {
    use std::arch::x86_64::*;
    let width = if PROMPT { 16 } else { 64 };
    let k = (q.as_ptr(), kb.as_ptr().add(j), bs, hd, width);
    // Each of the 16 values the final tree reduces, taken in the tree's order so that few
    // are live: t3[i] = s[i + 8] + s[i], t6[i] = t3[i + 4] + t3[i], then the last three.
    let a = add_h(t6_h::<PROMPT, H>(k, 0), t6_h::<PROMPT, H>(k, 2));
    let r = add_h(a, add_h(t6_h::<PROMPT, H>(k, 1), t6_h::<PROMPT, H>(k, 3)));
    let mut out = [[0f32; 8]; H];
    for h in 0..H {
        _mm256_storeu_ps(out[h].as_mut_ptr(), r[h]);
    }
    out
}

/// `t6[i] = t3[i + 4] + t3[i]` with `t3[i] = s[i + 8] + s[i]` of the tree's 16 inputs.
#[cfg(x86_v3)]
#[inline(always)]
unsafe fn t6_h<const PROMPT: bool, const H: usize>(
    k: ScoreLanes,
    i: usize,
) -> [std::arch::x86_64::__m256; H] {
    let a = add_h(
        tree_input::<PROMPT, H>(k, i + 12),
        tree_input::<PROMPT, H>(k, i + 4),
    );
    add_h(
        a,
        add_h(
            tree_input::<PROMPT, H>(k, i + 8),
            tree_input::<PROMPT, H>(k, i),
        ),
    )
}

/// Where the score lanes read: q, the block's keys from the first of eight, the block size,
/// the head dim, and the lane width (16 or 64).
#[cfg(x86_v3)]
type ScoreLanes = (*const f32, *const f16, usize, usize, usize);

/// Lane `x` of every head's dot product with eight keys: the products of dims x, x + width,
/// ... in order, from the first product, then by FMA.
#[cfg(x86_v3)]
#[inline(always)]
unsafe fn lane_h<const H: usize>(
    (qp, kp, bs, hd, width): ScoreLanes,
    x: usize,
) -> [std::arch::x86_64::__m256; H] {
    use std::arch::x86_64::*;
    let load = |d: usize| _mm256_cvtph_ps(_mm_loadu_si128(kp.add(d * bs) as *const __m128i));
    let k = load(x);
    let mut s = [_mm256_setzero_ps(); H];
    for (h, sh) in s.iter_mut().enumerate() {
        *sh = _mm256_mul_ps(_mm256_set1_ps(*qp.add(h * hd + x)), k);
    }
    let mut d = x + width;
    while d < hd {
        let k = load(d);
        for (h, sh) in s.iter_mut().enumerate() {
            *sh = _mm256_fmadd_ps(_mm256_set1_ps(*qp.add(h * hd + d)), k, *sh);
        }
        d += width;
    }
    s
}

/// Value `l` (of 16) of the tree: lane `l` in prompt order, `(c[l] + c[32 + l]) + (c[16 + l] +
/// c[48 + l])` of lanes `c` in decode order.
#[cfg(x86_v3)]
#[inline(always)]
unsafe fn tree_input<const PROMPT: bool, const H: usize>(
    k: ScoreLanes,
    l: usize,
) -> [std::arch::x86_64::__m256; H] {
    if PROMPT {
        lane_h::<H>(k, l)
    } else {
        let a = add_h(lane_h::<H>(k, l), lane_h::<H>(k, 32 + l));
        add_h(a, add_h(lane_h::<H>(k, 16 + l), lane_h::<H>(k, 48 + l)))
    }
}

#[cfg(x86_v3)]
#[inline(always)]
unsafe fn add_h<const H: usize>(
    a: [std::arch::x86_64::__m256; H],
    b: [std::arch::x86_64::__m256; H],
) -> [std::arch::x86_64::__m256; H] {
    use std::arch::x86_64::*;
    let mut r = a;
    for h in 0..H {
        r[h] = _mm256_add_ps(a[h], b[h]);
    }
    r
}
