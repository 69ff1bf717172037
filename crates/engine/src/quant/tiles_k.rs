//! Tiles for the K-quants (Q4_K, Q5_K, Q6_K x Q8_K): one weight super-block is unpacked once
//! into 8 chunks of 32 values and their i16 scales, then multiplied with up to four activation
//! rows. Each output is exactly `dots.rs`' product: per super-block the eight integer lanes
//! (their order free: integer sums are exact), one fused multiply-add per lane, the mins kept
//! as ggml's AVX2 code keeps them, the same horizontal sums.
//!
//! Weights stay in GGUF's row order (a column's super-blocks are one forward stream; at
//! 144-210 bytes a block, a column fills whole cache lines by itself).

use std::arch::x86_64::*;

use super::avx2::{hsum8, Avx2, Dot};
use super::kblocks::{scales_mins_k4_words, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use super::problem::Problem;

/// How a K-quant's min term enters the result (ggml's three AVX2 forms).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mins {
    /// Q6_K: none (its offset of 32 is subtracted in the integer lanes).
    None,
    /// Q4_K: four f32 lanes, a fused multiply-add per super-block, summed at the end.
    Lanes,
    /// Q5_K: the super-block's integer sum, then `summs += dmin * sum` (fused).
    Scalar,
}

/// A super-block unpacked for the row loop.
pub(super) struct Unpacked {
    /// The 256 values as 8 chunks of 32 unsigned bytes.
    q: [__m256i; 8],
    /// Each chunk's scale per byte pair (i16).
    sc: [__m256i; 8],
    d: f32,
    dmin: f32,
    /// The 8 sub-block mins as i16 (Q4_K, Q5_K).
    mins: __m128i,
    /// The 16 scales as i16 (Q6_K's offset term).
    scales16: __m256i,
}

pub(super) trait KBlock: Copy {
    const MINS: Mins;
    unsafe fn unpack(b: *const Self, u: &mut Unpacked);
}

/// Q4_K/Q5_K's 8 scales and 8 mins as 16 i16 lanes (scales first), from the packed 12 bytes.
#[inline(always)]
pub(super) unsafe fn k4_scales_mins(packed: &[u8; 12]) -> __m256i {
    let u = scales_mins_k4_words(packed);
    _mm256_cvtepu8_epi16(_mm_set_epi32(
        u[3] as i32,
        u[2] as i32,
        u[1] as i32,
        u[0] as i32,
    ))
}

/// Q4_K/Q5_K's scales broadcast per chunk and mins widened, from the packed 12 bytes.
#[inline(always)]
unsafe fn k4_scales(packed: &[u8; 12], u: &mut Unpacked) {
    let sm = k4_scales_mins(packed);
    let lo = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
    for (s, v) in u.sc.iter_mut().enumerate() {
        // i16 lane s everywhere (bytes 2s, 2s + 1).
        let pick = (2 * s as i16) | ((2 * s as i16 + 1) << 8);
        *v = _mm256_shuffle_epi8(lo, _mm256_set1_epi16(pick));
    }
    u.mins = _mm256_extracti128_si256::<1>(sm);
}

impl KBlock for BlockQ4K {
    const MINS: Mins = Mins::Lanes;
    #[inline(always)]
    unsafe fn unpack(b: *const Self, u: &mut Unpacked) {
        let m4 = _mm256_set1_epi8(0x0F);
        for j in 0..4 {
            let bits = _mm256_loadu_si256((*b).qs.as_ptr().add(32 * j) as *const __m256i);
            u.q[2 * j] = _mm256_and_si256(bits, m4);
            u.q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
        }
        k4_scales(&(*b).scales, u);
        u.d = (*b).d.to_f32();
        u.dmin = (*b).dmin.to_f32();
    }
}

impl KBlock for BlockQ5K {
    const MINS: Mins = Mins::Scalar;
    #[inline(always)]
    unsafe fn unpack(b: *const Self, u: &mut Unpacked) {
        let m4 = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        let hbits = _mm256_loadu_si256((*b).qh.as_ptr() as *const __m256i);
        for j in 0..4 {
            let bits = _mm256_loadu_si256((*b).qs.as_ptr().add(32 * j) as *const __m256i);
            // Bit s of each qh byte, as 0 or 16 (16-bit shifts keep each byte's own bit in
            // its bit 0).
            let high = |s: i32| {
                let h = _mm256_srl_epi16(hbits, _mm_cvtsi32_si128(s));
                _mm256_slli_epi16::<4>(_mm256_and_si256(h, one))
            };
            u.q[2 * j] = _mm256_add_epi8(_mm256_and_si256(bits, m4), high(2 * j as i32));
            u.q[2 * j + 1] = _mm256_add_epi8(
                _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4),
                high(2 * j as i32 + 1),
            );
        }
        k4_scales(&(*b).scales, u);
        u.d = (*b).d.to_f32();
        u.dmin = (*b).dmin.to_f32();
    }
}

impl KBlock for BlockQ6K {
    const MINS: Mins = Mins::None;
    #[inline(always)]
    unsafe fn unpack(b: *const Self, u: &mut Unpacked) {
        let m15 = _mm256_set1_epi8(15);
        for j in 0..2 {
            let ql = (*b).ql.as_ptr().add(64 * j);
            let bits1 = _mm256_loadu_si256(ql as *const __m256i);
            let bits2 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
            let bh = _mm256_loadu_si256((*b).qh.as_ptr().add(32 * j) as *const __m256i);
            let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(bh, _mm256_set1_epi8(3)));
            let h1 = _mm256_slli_epi16::<2>(_mm256_and_si256(bh, _mm256_set1_epi8(12)));
            let h2 = _mm256_and_si256(bh, _mm256_set1_epi8(48));
            let h3 = _mm256_srli_epi16::<2>(_mm256_and_si256(bh, _mm256_set1_epi8(-64)));
            u.q[4 * j] = _mm256_or_si256(_mm256_and_si256(bits1, m15), h0);
            u.q[4 * j + 1] = _mm256_or_si256(_mm256_and_si256(bits2, m15), h1);
            u.q[4 * j + 2] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(bits1), m15), h2);
            u.q[4 * j + 3] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(bits2), m15), h3);
        }
        let s = &(*b).scales;
        for (c, sc) in u.sc.iter_mut().enumerate() {
            // Bytes 0..16 of chunk c take scale 2c, bytes 16..32 scale 2c + 1.
            *sc = _mm256_set_m128i(
                _mm_set1_epi16(s[2 * c + 1] as i16),
                _mm_set1_epi16(s[2 * c] as i16),
            );
        }
        u.scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(s.as_ptr() as *const __m128i));
        u.d = (*b).d.to_f32();
    }
}

/// A super-block's scale terms as the rows' epilogue reads them.
#[derive(Clone, Copy)]
pub(super) struct BlockScales {
    pub d: f32,
    pub dmin: f32,
    /// The 8 sub-block mins as i16 (Q4_K, Q5_K).
    pub mins: __m128i,
    /// The 16 scales as i16 (Q6_K's offset term).
    pub scales16: __m256i,
}

/// One row's running sums over the super-blocks.
#[derive(Clone, Copy)]
pub(super) struct RowAcc {
    acc: __m256,
    acc_m: __m128,
    summs: f32,
}

impl RowAcc {
    #[inline(always)]
    pub(super) unsafe fn new() -> Self {
        Self {
            acc: _mm256_setzero_ps(),
            acc_m: _mm_setzero_ps(),
            summs: 0.0,
        }
    }

    /// Adds one super-block: `sumi` holds its eight integer lanes (scaled chunk sums), `y`
    /// its activation block; the offset or min term, then `d` as ggml's AVX2 code does.
    #[inline(always)]
    pub(super) unsafe fn add<W: KBlock>(
        &mut self,
        mut sumi: __m256i,
        y: &BlockQ8K,
        s: &BlockScales,
    ) {
        let bsums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
        if W::MINS == Mins::None {
            let sub = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, s.scales16));
            sumi = _mm256_sub_epi32(sumi, sub);
        } else {
            let q8s = _mm_hadd_epi16(
                _mm256_castsi256_si128(bsums),
                _mm256_extracti128_si256::<1>(bsums),
            );
            let prod = _mm_madd_epi16(s.mins, q8s);
            let dmin = -y.d * s.dmin;
            if W::MINS == Mins::Lanes {
                self.acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), self.acc_m);
            } else {
                let h = _mm_hadd_epi32(
                    _mm_hadd_epi32(prod, _mm_setzero_si128()),
                    _mm_setzero_si128(),
                );
                self.summs = dmin.mul_add(_mm_cvtsi128_si32(h) as f32, self.summs);
            }
        }
        let d = _mm256_set1_ps(y.d * s.d);
        self.acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), self.acc);
    }

    /// The row's dot product (ggml's horizontal sums).
    #[inline(always)]
    pub(super) unsafe fn finish<W: KBlock>(&self) -> f32 {
        let v = hsum8(self.acc);
        match W::MINS {
            Mins::None => v,
            Mins::Scalar => v + self.summs,
            Mins::Lanes => {
                let m = _mm_add_ps(self.acc_m, _mm_movehl_ps(self.acc_m, self.acc_m));
                let m = _mm_add_ss(m, _mm_movehdup_ps(m));
                v + _mm_cvtss_f32(m)
            }
        }
    }
}

/// Rows `r0..r0+R` of column `c`.
#[inline(always)]
unsafe fn tile<W: KBlock, I: Dot, const R: usize>(p: &Problem<W, BlockQ8K>, r0: usize, c: usize) {
    let kb = p.kb;
    let w = p.w.add(c * kb);
    let x = p.x.add(r0 * kb);
    let mut rows = [RowAcc::new(); R];
    let mut u = Unpacked {
        q: [_mm256_setzero_si256(); 8],
        sc: [_mm256_setzero_si256(); 8],
        d: 0.0,
        dmin: 0.0,
        mins: _mm_setzero_si128(),
        scales16: _mm256_setzero_si256(),
    };
    for b in 0..kb {
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(b + 2) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>((w.wrapping_add(b + 2) as *const i8).wrapping_add(64));
        _mm_prefetch::<_MM_HINT_T0>((w.wrapping_add(b + 2) as *const i8).wrapping_add(128));
        W::unpack(w.add(b), &mut u);
        let scales = BlockScales {
            d: u.d,
            dmin: u.dmin,
            mins: u.mins,
            scales16: u.scales16,
        };
        for (r, row) in rows.iter_mut().enumerate() {
            let y = &*x.add(r * kb + b);
            let mut sumi = _mm256_setzero_si256();
            for s in 0..8 {
                let qy = _mm256_loadu_si256(y.qs.as_ptr().add(32 * s) as *const __m256i);
                sumi = I::scaled_dot_add(sumi, u.q[s], qy, u.sc[s]);
            }
            row.add::<W>(sumi, y, &scales);
        }
    }
    for (r, row) in rows.iter().enumerate() {
        *p.out.add((r0 + r) * p.n + c) = row.finish::<W>();
    }
}

/// One AVX2 task: columns `c0..c1` for every row, eight rows at a time (a super-block is
/// unpacked once per eight rows; the unpacked chunks sit in L1).
#[inline(always)]
unsafe fn task<W: KBlock, I: Dot>(p: &Problem<W, BlockQ8K>, c0: usize, c1: usize) {
    let mut r0 = 0;
    while r0 < p.m {
        let rows = (p.m - r0).min(8);
        for c in c0..c1 {
            match rows {
                8 => tile::<W, I, 8>(p, r0, c),
                7 => tile::<W, I, 7>(p, r0, c),
                6 => tile::<W, I, 6>(p, r0, c),
                5 => tile::<W, I, 5>(p, r0, c),
                4 => tile::<W, I, 4>(p, r0, c),
                3 => tile::<W, I, 3>(p, r0, c),
                2 => tile::<W, I, 2>(p, r0, c),
                _ => tile::<W, I, 1>(p, r0, c),
            }
        }
        r0 += 8;
    }
}

pub(super) unsafe fn task_avx2<W: KBlock>(p: &Problem<W, BlockQ8K>, c0: usize, c1: usize) {
    task::<W, Avx2>(p, c0, c1)
}
