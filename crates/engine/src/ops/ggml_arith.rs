//! llama.cpp's CPU arithmetic, reproduced operation for operation, so that the CPU backend's
//! outputs match llama.cpp's (the project's goldens) bit for bit rather than to within
//! rounding: on this model any 1-ulp difference upstream flips some 8-bit activation
//! roundings downstream, and the log-probs then drift by up to ~0.5 (measured: llama.cpp's
//! own f32-KV or flash-attention builds put only ~96% of its greedy log-probs within 0.15 of
//! its default build's).
//!
//! The reference is llama.cpp's default CPU build as the goldens were made (AVX-512, F16 KV
//! cache, flash attention off, single-token decode): RMSNorm summed in double, RoPE's angle
//! by repeated f32 multiplication, the AVX-512 `ggml_v_expf` polynomial, and f16 dot
//! products with their SIMD lanes and reduction tree. Every function here is plain IEEE
//! arithmetic (fma where llama.cpp's compiled code fuses), so the result does not depend on
//! which SIMD width computes it.

/// `ggml_v_expf`'s constants (AVX-512 build), as bit patterns (hex float literals).
const ROUND: u32 = 0x4b40_0000; // 0x1.8p23
const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
const C4: u32 = 0x3c07_2010; // 0x1.0e4020p-7
const C3: u32 = 0x3d2b_9f17; // 0x1.573e2ep-5
const C2: u32 = 0x3e2a_af33; // 0x1.555e66p-3
const C1: u32 = 0x3eff_fedb; // 0x1.fffdb6p-2
const C0: u32 = 0x3f7f_fff6; // 0x1.ffffecp-1

#[inline(always)]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// `ggml_v_expf` (AVX-512) for one lane: `n = round(x / ln 2)`, a degree-5 polynomial in
/// the remainder, then `scalef` (one rounding, subnormals included).
#[inline]
pub fn expf(x: f32) -> f32 {
    let z = x.mul_add(c(LOG2E), c(ROUND));
    let n = z - c(ROUND);
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    let u = b * b;
    let j = c(C4)
        .mul_add(b, c(C3))
        .mul_add(u, c(C2).mul_add(b, c(C1)))
        .mul_add(u, c(C0).mul_add(b, 1.0));
    scalef(j, n)
}

/// [`expf`] on 8 values at once (AVX2 vector lanes when every `n` is a normal exponent,
/// which softmax and SiLU inputs nearly always are; else lane by lane): the same bits.
#[inline]
pub fn expf8(x: [f32; 8]) -> [f32; 8] {
    #[cfg(x86_v3)]
    // SAFETY: AVX2 and FMA are in the build's target.
    unsafe {
        use std::arch::x86_64::*;
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), expf8_avx2(_mm256_loadu_ps(x.as_ptr())));
        return out;
    }
    #[allow(unreachable_code)]
    expf8_portable(x)
}

#[inline]
fn expf8_portable(x: [f32; 8]) -> [f32; 8] {
    std::array::from_fn(|i| expf(x[i]))
}

/// [`expf8`] on an AVX2 vector (the same operations as vector instructions).
///
/// # Safety
/// The CPU must have AVX2 and FMA (this build's target guarantees it where compiled).
#[cfg(x86_v3)]
#[inline(always)]
pub unsafe fn expf8_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let set = |b: u32| _mm256_set1_ps(c(b));
    let z = _mm256_fmadd_ps(x, set(LOG2E), set(ROUND));
    let n = _mm256_sub_ps(z, set(ROUND));
    let b = _mm256_fnmadd_ps(n, set(LN2_LO), _mm256_fnmadd_ps(n, set(LN2_HI), x));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(set(C4), b, set(C3)),
            u,
            _mm256_fmadd_ps(set(C2), b, set(C1)),
        ),
        u,
        _mm256_fmadd_ps(set(C0), b, _mm256_set1_ps(1.0)),
    );
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    if _mm256_movemask_ps(_mm256_cmp_ps(abs_n, _mm256_set1_ps(126.0), _CMP_GT_OQ)) != 0 {
        let (mut jv, mut nv) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(jv.as_mut_ptr(), j);
        _mm256_storeu_ps(nv.as_mut_ptr(), n);
        let r: [f32; 8] = std::array::from_fn(|i| scalef(jv[i], nv[i]));
        return _mm256_loadu_ps(r.as_ptr());
    }
    // 2^n is a normal f32 (n is integral), so j * 2^n rounds once, as scalef does.
    let e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(j, _mm256_castsi256_ps(e))
}

/// f16 values to f32 (exact).
#[inline]
pub fn f16_to_f32(src: &[half::f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    #[allow(unused_mut)] // advanced only by the F16C loop
    let mut i = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
    // SAFETY: F16C is in the build's target; loads and stores stay inside the slices.
    unsafe {
        use std::arch::x86_64::*;
        while i + 8 <= n {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
    }
    for k in i..n {
        dst[k] = src[k].to_f32();
    }
}

/// Rounds f32 values to f16 (to nearest even, as llama.cpp converts) in place, keeping them
/// as f32.
#[inline]
pub fn round_to_f16(x: &mut [f32]) {
    #[allow(unused_mut)] // advanced only by the F16C loop
    let mut i = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
    // SAFETY: F16C is in the build's target; loads and stores stay inside the slice.
    unsafe {
        use std::arch::x86_64::*;
        while i + 8 <= x.len() {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_ps(x.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
    }
    for v in &mut x[i..] {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// `_mm512_scalef_ps(j, n)` for the values `ggml_v_expf` gives it, with its `|n| > 192`
/// overflow/underflow blend.
#[inline]
fn scalef(j: f32, n: f32) -> f32 {
    // The blend comes last in llama.cpp and overrides a NaN `j` (x = -inf gives one).
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    if n.is_nan() {
        return f32::NAN;
    }
    // j * 2^n is exact in f64 for |n| <= 192; the cast rounds once, as scalef does.
    let pow2 = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (j as f64 * pow2) as f32
}

/// `ggml_v_silu`: `x / (1 + expf(0 - x))`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

/// `ggml_vec_swiglu_f32` over one row, `o = silu(g) * u`: 16 values at a time with
/// [`expf8`] (two halves), the rest with libm's `expf` as its scalar tail.
pub fn swiglu_row(g: &[f32], u: &[f32], o: &mut [f32]) {
    let whole = g.len() / 16 * 16;
    for i in (0..whole).step_by(8) {
        let x: [f32; 8] = std::array::from_fn(|k| 0.0 - g[i + k]);
        let e = expf8(x);
        for k in 0..8 {
            o[i + k] = g[i + k] / (1.0 + e[k]) * u[i + k];
        }
    }
    for i in whole..g.len() {
        o[i] = g[i] / (1.0 + (-g[i]).exp()) * u[i];
    }
}

/// `_mm512_reduce_add_ps`'s tree (GCC): halves, then quarters, then pairs.
#[inline(always)]
pub fn reduce16(v: &[f32; 16]) -> f32 {
    let t3: [f32; 8] = std::array::from_fn(|i| v[i + 8] + v[i]);
    let t6: [f32; 4] = std::array::from_fn(|i| t3[i + 4] + t3[i]);
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// `ggml_vec_dot_f16`'s result (AVX-512: four 16-lane accumulators over steps of 64, then
/// `(a0 + a2) + (a1 + a3)` and [`reduce16`]) from the 64 lane sums `acc[i % 64]`, where each
/// lane summed its products in order starting from +0, then `tail_terms` (the products past
/// the last whole step), which llama.cpp adds in double one at a time.
#[inline]
pub fn dot_f16_finish(acc: &[f32; 64], tail_terms: impl Iterator<Item = f32>) -> f32 {
    let s: [f32; 16] =
        std::array::from_fn(|l| (acc[l] + acc[32 + l]) + (acc[16 + l] + acc[48 + l]));
    let mut sum = reduce16(&s) as f64;
    for t in tail_terms {
        sum += t as f64;
    }
    sum as f32
}

/// `ggml_vec_dot_f16(x, y)` over two f16 vectors given as their exact f32 values: the
/// products of two f16 values are exact in f32, so a lane's fma chain is a chain of adds.
pub fn dot_f16(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let np = n - n % 64;
    let mut acc = [0f32; 64];
    for i in 0..np {
        acc[i % 64] += x[i] * y[i];
    }
    dot_f16_finish(&acc, (np..n).map(|i| x[i] * y[i]))
}

/// The f16 dot product as llama.cpp's prompt processing computes it (llamafile's `tinyBLAS`,
/// which takes f16 matmuls with two or more columns, AVX-512): 16 lanes, lane `i % 16`
/// adding its products in order from +0, then [`reduce16`]. `x.len()` is a multiple of 16.
pub fn dot_f16_tiled(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (i, (a, b)) in x.iter().zip(y).enumerate() {
        acc[i % 16] += a * b;
    }
    reduce16(&acc)
}

/// RMSNorm as `ggml_compute_forward_rms_norm_f32` then `ggml_mul`: squares summed in double,
/// `scale = 1 / sqrtf(mean + eps)` in f32, `(x * scale) * w`.
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut sum = 0f64;
    for &v in x {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * w;
    }
}

/// RoPE's cos/sin for one position as `ggml_rope_cache_init`: the angle starts at the
/// position and is multiplied by `theta_scale = powf(base, -2 / dims)` once per pair (in
/// f32), divided by the pair's frequency factor, scaled by `freq_scale`, then `cosf`/`sinf`.
pub fn rope_cache(
    pos: usize,
    half: usize,
    base: f32,
    freq_scale: f32,
    freq_factors: Option<&[f32]>,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let theta_scale = base.powf(-2.0 / (2 * half) as f32);
    let mut theta = pos as f32;
    for i in 0..half {
        let ff = freq_factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
        let t = freq_scale * (theta / ff);
        cos[i] = t.cos();
        sin[i] = t.sin();
        theta *= theta_scale;
    }
}

/// Rotates one pair as llama.cpp's compiled `rotate_pairs` does (GCC contracts each line
/// into one fma): `(fma(x0, cos, -(x1 sin)), fma(x0, sin, x1 cos))`.
#[inline(always)]
pub fn rotate_pair(x0: f32, x1: f32, cos: f32, sin: f32) -> (f32, f32) {
    (x0.mul_add(cos, -(x1 * sin)), x0.mul_add(sin, x1 * cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expf_is_within_two_ulp_of_libm_and_handles_the_edges() {
        let mut x = -100.0f32;
        while x < 88.0 {
            let (got, want) = (expf(x), x.exp());
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulp <= 2, "expf({x}) = {got}, libm {want}");
            x += 0.0137;
        }
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(200.0), f32::INFINITY);
        assert!(expf(f32::NAN).is_nan());
        // Subnormal results round once.
        let tiny = expf(-100.0);
        assert!(tiny > 0.0 && tiny < f32::MIN_POSITIVE);
    }

    #[test]
    fn expf8_is_expf_lane_for_lane() {
        let mut x = -110.0f32;
        while x < 90.0 {
            let v: [f32; 8] = std::array::from_fn(|i| x + i as f32 * 0.37);
            let (got, portable) = (expf8(v), expf8_portable(v));
            for i in 0..8 {
                assert_eq!(got[i].to_bits(), expf(v[i]).to_bits(), "{}", v[i]);
                assert_eq!(portable[i].to_bits(), expf(v[i]).to_bits(), "{}", v[i]);
            }
            x += 1.3;
        }
        let edge = [
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            1e-30,
            -87.5,
            88.7,
            f32::NAN,
            150.0,
        ];
        let got = expf8(edge);
        for i in 0..8 {
            assert!(
                got[i].to_bits() == expf(edge[i]).to_bits()
                    || (got[i].is_nan() && expf(edge[i]).is_nan())
            );
        }
    }

    #[test]
    fn f16_conversions_round_to_nearest_even() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.3711 + 1e-4).collect();
        let mut r = x.clone();
        round_to_f16(&mut r);
        let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
        let mut back = vec![0f32; 37];
        f16_to_f32(&h, &mut back);
        for i in 0..37 {
            assert_eq!(r[i].to_bits(), h[i].to_f32().to_bits());
            assert_eq!(back[i].to_bits(), h[i].to_f32().to_bits());
        }
    }

    #[test]
    fn reduce16_is_the_halving_tree() {
        // Values whose sum depends on the order: the tree pairs 1e8 with -1e8 first.
        let mut v = [1.0f32; 16];
        v[0] = 1e8;
        v[8] = -1e8;
        assert_eq!(reduce16(&v), 14.0);
        let seq: f32 = v.iter().sum();
        assert_ne!(seq, 14.0, "sequential order loses the ones");
    }

    #[test]
    fn dot_f16_sums_lanes_then_the_tail_in_double() {
        let x: Vec<f32> = (0..70)
            .map(|i| half::f16::from_f32(i as f32 * 0.37 - 9.0).to_f32())
            .collect();
        let y: Vec<f32> = (0..70)
            .map(|i| half::f16::from_f32(1.0 / (i as f32 + 1.5)).to_f32())
            .collect();
        let exact: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((dot_f16(&x, &y) as f64 - exact).abs() < 1e-4);
        // The first 64 products go to lanes i % 64 in order.
        let mut acc = [0f32; 64];
        for i in 0..64 {
            acc[i] = x[i] * y[i];
        }
        let want = dot_f16_finish(&acc, (64..70).map(|i| x[i] * y[i]));
        assert_eq!(dot_f16(&x, &y), want);
    }

    #[test]
    fn rms_norm_row_matches_the_formula() {
        let x: Vec<f32> = (0..576)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let w: Vec<f32> = (0..576).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
        let mut out = vec![0f32; 576];
        rms_norm_row(&x, &w, 1e-5, &mut out);
        let ms: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 576.0;
        for i in 0..576 {
            let want = x[i] as f64 / (ms + 1e-5).sqrt() * w[i] as f64;
            assert!((out[i] as f64 - want).abs() < 1e-5 * want.abs().max(1.0));
        }
    }

    #[test]
    fn rope_cache_is_close_to_the_exact_angles() {
        let (mut cos, mut sin) = (vec![0f32; 32], vec![0f32; 32]);
        rope_cache(1000, 32, 10000.0, 1.0, None, &mut cos, &mut sin);
        for i in 0..32 {
            let a = 1000.0 * 10000f64.powf(-((2 * i) as f64) / 64.0);
            // The repeated f32 product drifts by a few ulp of the angle.
            assert!((cos[i] as f64 - a.cos()).abs() < 2e-3, "pair {i}");
            assert!((sin[i] as f64 - a.sin()).abs() < 2e-3, "pair {i}");
        }
    }
}
