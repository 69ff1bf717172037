//! The vector lanes of the llama.cpp-order kernel: 8 keys' scores at once, and the values'
//! 16-lane chains, each lane the same sequential sum as llama.cpp's (AVX2 where built for it,
//! a portable form that the `-C target-cpu=x86-64` build runs).

#[cfg(x86_v3)]
use half::f16;

/// The 16 values per dim that [`crate::ops::ggml_arith::reduce16`]'s tree takes, for dims
/// `d0..d0 + 8 W`, into `tree[l][d]`: each lane's chain of positions held in W registers
/// (from its first product: llama.cpp's chains start from +0, which differs only in the sign
/// of an all-zero sum; a lane no position reaches is +0).
#[cfg(x86_v3)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn values_lanes_avx2<const W: usize>(
    p: &[f32],
    rows: &[usize],
    v: &[f16],
    d0: usize,
    prompt: bool,
    tree: &mut [f32],
    hd: usize,
) {
    use std::arch::x86_64::*;
    let n = p.len();
    let step = if prompt { 16 } else { 64 };
    let vp = v.as_ptr().add(d0);
    let chain = |lane: usize| -> [__m256; W] {
        let mut acc = [_mm256_setzero_ps(); W];
        let mut i = lane;
        let mut first = true;
        while i < n {
            let pv = _mm256_set1_ps(*p.get_unchecked(i));
            let row = vp.add(*rows.get_unchecked(i));
            for (w, a) in acc.iter_mut().enumerate() {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * w) as *const __m128i));
                let t = _mm256_mul_ps(x, pv);
                *a = if first { t } else { _mm256_add_ps(*a, t) };
            }
            first = false;
            i += step;
        }
        acc
    };
    let tp = tree.as_mut_ptr().add(d0);
    for l in 0..16 {
        let dst = tp.add(l * hd);
        if prompt {
            for (w, a) in chain(l).iter().enumerate() {
                _mm256_storeu_ps(dst.add(8 * w), *a);
            }
        } else {
            let (a0, a2) = (chain(l), chain(32 + l));
            for w in 0..W {
                _mm256_storeu_ps(dst.add(8 * w), _mm256_add_ps(a0[w], a2[w]));
            }
            let (a1, a3) = (chain(16 + l), chain(48 + l));
            for w in 0..W {
                let x = _mm256_loadu_ps(dst.add(8 * w));
                _mm256_storeu_ps(
                    dst.add(8 * w),
                    _mm256_add_ps(x, _mm256_add_ps(a1[w], a3[w])),
                );
            }
        }
    }
}

/// [`crate::ops::ggml_arith::reduce16`] of `tree: [16, head_dim]` for every dim at once (vector
/// lanes over `d`): halves, then quarters, then pairs.
#[allow(dead_code)] // the portable build reduces per dim
pub(super) fn tree_reduce(tree: &mut [f32], out: &mut [f32]) {
    let hd = out.len();
    for width in [8, 4] {
        for i in 0..width {
            let (lo, hi) = tree.split_at_mut((i + width) * hd);
            let (dst, src) = (&mut lo[i * hd..][..hd], &hi[..hd]);
            for d in 0..hd {
                dst[d] += src[d];
            }
        }
    }
    let t = |i: usize| &tree[i * hd..][..hd];
    let (t0, t1, t2, t3) = (t(0), t(1), t(2), t(3));
    for d in 0..hd {
        out[d] = (t0[d] + t2[d]) + (t1[d] + t3[d]);
    }
}

/// `out[j] = dot_f16(q, key j)` (or `dot_f16_tiled` in prompt order) for the first
/// `out.len()` keys of a block held as f32 `kb: [head_dim, block_size]`, unscaled; 8 keys per
/// pass as vector lanes when the head dimension is whole SIMD steps.
pub(super) fn key_scores(q: &[f32], kb: &[f32], bs: usize, out: &mut [f32], prompt: bool) {
    let (hd, len) = (q.len(), out.len());
    if bs.is_multiple_of(8) && hd.is_multiple_of(if prompt { 16 } else { 64 }) {
        for j in (0..len).step_by(8) {
            let lanes = if prompt {
                dot8::<true>(q, kb, bs, j)
            } else {
                dot8::<false>(q, kb, bs, j)
            };
            if j + 8 <= len {
                out[j..j + 8].copy_from_slice(&lanes);
            } else {
                out[j..len].copy_from_slice(&lanes[..len - j]);
            }
        }
    } else {
        let mut k = vec![0f32; hd];
        for (j, o) in out.iter_mut().enumerate().take(len) {
            for (d, kd) in k.iter_mut().enumerate() {
                *kd = kb[d * bs + j];
            }
            *o = if prompt {
                crate::ops::ggml_arith::dot_f16_tiled(q, &k)
            } else {
                crate::ops::ggml_arith::dot_f16(q, &k)
            };
        }
    }
}

pub(super) type Lanes = [f32; 8];

/// Eight keys of a block held as f32 `[head_dim, block_size]`: the block, its size, and the
/// first key.
pub(super) type KeyLanes<'a> = (&'a [f32], usize, usize);

#[inline(always)]
pub(super) fn add(a: Lanes, b: Lanes) -> Lanes {
    std::array::from_fn(|x| a[x] + b[x])
}

/// [`crate::ops::ggml_arith::dot_f16`] (`PROMPT`: `dot_f16_tiled`) of `q` with keys `j..j + 8`
/// of `kb` (each vector lane one key), for a head dimension of whole 64-wide (16) steps.
#[inline(always)]
pub(super) fn dot8<const PROMPT: bool>(q: &[f32], kb: &[f32], bs: usize, j: usize) -> Lanes {
    #[cfg(x86_v3)]
    {
        let width = if PROMPT { 16 } else { 64 };
        assert!(q.len().is_multiple_of(width) && !q.is_empty());
        assert!(j + 8 <= bs && kb.len() >= q.len() * bs);
        // SAFETY: AVX2 is in the build's target; every load is inside `kb` / `q` (asserted).
        // The usual head dims get their chain lengths as constants (fully unrolled).
        return unsafe {
            match q.len() / width {
                1 => dot8_avx2::<PROMPT, 1>(q, (kb, bs, j)),
                2 => dot8_avx2::<PROMPT, 2>(q, (kb, bs, j)),
                4 => dot8_avx2::<PROMPT, 4>(q, (kb, bs, j)),
                8 => dot8_avx2::<PROMPT, 8>(q, (kb, bs, j)),
                _ => dot8_avx2::<PROMPT, 0>(q, (kb, bs, j)),
            }
        };
    }
    #[allow(unreachable_code)]
    dot8_portable::<PROMPT>(q, (kb, bs, j))
}

/// [`dot8`] in AVX2 vectors (one key per lane; the same adds in the same order).
#[cfg(x86_v3)]
#[inline(always)]
pub(super) unsafe fn dot8_avx2<const PROMPT: bool, const STEPS: usize>(
    q: &[f32],
    (kb, bs, j): KeyLanes<'_>,
) -> Lanes {
    use std::arch::x86_64::*;
    let width = if PROMPT { 16 } else { 64 };
    // STEPS = 0: not a constant.
    let steps = if STEPS > 0 { STEPS } else { q.len() / width };
    let (qp, kp) = (q.as_ptr(), kb.as_ptr().add(j));
    // A lane's chain from its first product (llama.cpp's starts from +0: that differs only
    // in the sign of an all-zero sum, which no score can tell).
    #[inline(always)]
    unsafe fn lane(
        qp: *const f32,
        kp: *const f32,
        bs: usize,
        l: usize,
        width: usize,
        steps: usize,
    ) -> __m256 {
        let prod =
            |d: usize| _mm256_mul_ps(_mm256_set1_ps(*qp.add(d)), _mm256_loadu_ps(kp.add(d * bs)));
        let mut s = prod(l);
        for c in 1..steps {
            s = _mm256_add_ps(s, prod(width * c + l));
        }
        s
    }
    let mut sv = [_mm256_setzero_ps(); 16];
    for (l, sl) in sv.iter_mut().enumerate() {
        let lane = |x: usize| lane(qp, kp, bs, x, width, steps);
        *sl = if PROMPT {
            lane(l)
        } else {
            _mm256_add_ps(
                _mm256_add_ps(lane(l), lane(32 + l)),
                _mm256_add_ps(lane(16 + l), lane(48 + l)),
            )
        };
    }
    let t3: [__m256; 8] = std::array::from_fn(|i| _mm256_add_ps(sv[i + 8], sv[i]));
    let t6: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(t3[i + 4], t3[i]));
    let r = _mm256_add_ps(_mm256_add_ps(t6[0], t6[2]), _mm256_add_ps(t6[1], t6[3]));
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), r);
    out
}

#[inline(always)]
#[allow(dead_code)] // the portable build's path (its tests run it: -C target-cpu=x86-64)
pub(super) fn dot8_portable<const PROMPT: bool>(q: &[f32], (kb, bs, j): KeyLanes<'_>) -> Lanes {
    let width = if PROMPT { 16 } else { 64 };
    let steps = q.len() / width;
    // Lane l of llama.cpp's accumulators: the products of dims l, l + width, ... in order.
    let lane = |l: usize| -> Lanes {
        let mut s = [0f32; 8];
        for c in 0..steps {
            let d = width * c + l;
            let (qd, k) = (q[d], &kb[d * bs + j..][..8]);
            for x in 0..8 {
                s[x] += qd * k[x];
            }
        }
        s
    };
    // The 16 values the final tree reduces.
    let s = |l: usize| {
        if PROMPT {
            lane(l)
        } else {
            add(add(lane(l), lane(32 + l)), add(lane(16 + l), lane(48 + l)))
        }
    };
    let t3: [Lanes; 8] = std::array::from_fn(|i| add(s(i + 8), s(i)));
    let t6: [Lanes; 4] = std::array::from_fn(|i| add(t3[i + 4], t3[i]));
    add(add(t6[0], t6[2]), add(t6[1], t6[3]))
}
