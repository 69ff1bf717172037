//! The x86 quantized matmul: register tiles of up to 4 activation rows x C weight columns.
//!
//! Each rayon task owns a tile of output columns and sweeps the activation rows four at a
//! time; per pass over the K blocks it computes an R x C tile of outputs, so each weight
//! block is unpacked once per R rows and each activation block loaded once per C columns
//! (the one-row-at-a-time form was bound by those per-block instructions, not by memory).
//! Every output element is still exactly ggml's dot product: the same eight integer lanes per
//! block, the same `d_w * d_x` product and fused multiply-add in block order, the min term
//! summed apart in block order, the same final horizontal sum. So each result is
//! bit-identical to [`super::dots::dot_q4_1_q8_1`] / `dot_q8_0_q8_0` whatever the batch,
//! the tile shape, the thread count or the instruction set.
//!
//! Instruction sets: AVX2 (the build's baseline) or AVX-512 VNNI (`vpdpbusd` does the
//! `maddubs` + `madd` pair in one instruction; 32 vector registers allow 4 x 4 tiles). VNNI
//! is used only where the CPU reports it, the OS has enabled the AVX-512 state, and a forked
//! child ran the kernel and got the AVX2 kernel's bits (these VMs advertise AMX yet die on
//! it, so a CPUID flag alone is not trusted). `FERROLM_CPU_ISA=avx2` forces AVX2.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::avx2::hsum8;
use super::blocks::{BlockQ4_1, BlockQ8_0, BlockQ8_1};
use super::columns::COLUMN_GROUP as G;

/// Blocks ahead that a tile asks the memory system for: a decode step streams every weight
/// from DRAM once, and the hardware prefetcher alone left the tiles waiting on it.
const PREFETCH_BLOCKS: usize = 16;

/// Prefetches the weight bytes `PREFETCH_BLOCKS` group-blocks ahead of block `b` (two cache
/// lines: a group-block is 4 x 20 or 4 x 34 bytes). Prefetching past the end is harmless.
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

/// The instruction set the CPU kernels run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuIsa {
    Avx2,
    Avx512Vnni,
}

static ISA: OnceLock<CpuIsa> = OnceLock::new();

/// The instruction set chosen for this process (probed once).
pub fn cpu_isa() -> CpuIsa {
    *ISA.get_or_init(|| {
        if crate::env::get().cpu_isa_avx2 {
            return CpuIsa::Avx2;
        }
        if vnni_reported() && vnni_probe() {
            CpuIsa::Avx512Vnni
        } else {
            CpuIsa::Avx2
        }
    })
}

/// CPUID says so and XGETBV says the OS saves the AVX-512 registers (std checks both).
fn vnni_reported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Runs the VNNI kernel in a forked child on fixed blocks and compares with the AVX2 bits: a
/// SIGILL (or a wrong answer) costs the child, not this process.
fn vnni_probe() -> bool {
    let mut w = [BlockQ4_1 {
        d: half::f16::from_f32(0.0123),
        m: half::f16::from_f32(-0.07),
        qs: [0; 16],
    }; 2];
    let mut x = [BlockQ8_1 {
        d: half::f16::from_f32(0.021),
        s: half::f16::from_f32(0.5),
        qs: [0; 32],
    }; 2];
    for (i, b) in w.iter_mut().enumerate() {
        for (j, q) in b.qs.iter_mut().enumerate() {
            *q = (i * 31 + j * 17) as u8;
        }
    }
    for (i, b) in x.iter_mut().enumerate() {
        for (j, q) in b.qs.iter_mut().enumerate() {
            *q = ((i * 13 + j * 29) % 255) as i8;
        }
    }
    // One column in the grouped layout: block b of the group's G columns at b * G.
    let wg: [BlockQ4_1; 2 * G] = std::array::from_fn(|i| w[i / G]);
    let xd = [
        [x[0].d.to_f32(), 0.0, 0.0, 0.0],
        [x[1].d.to_f32(), 0.0, 0.0, 0.0],
    ];
    let xs = [
        [x[0].s.to_f32(), 0.0, 0.0, 0.0],
        [x[1].s.to_f32(), 0.0, 0.0, 0.0],
    ];
    let run = |vnni: bool| {
        let mut out = [0f32; 1];
        let p = Q4Problem {
            w: wg.as_ptr(),
            x: x.as_ptr(),
            xd: xd.as_ptr(),
            xs: xs.as_ptr(),
            out: out.as_mut_ptr(),
            m: 1,
            n: 1,
            kb: 2,
        };
        // SAFETY: the pointers cover m x kb activation blocks, n x kb weight blocks, m x n
        // outputs; the VNNI form runs only in the child below.
        unsafe {
            if vnni {
                q4_1_task_vnni(&p, 0, 1)
            } else {
                q4_1_task_avx2(&p, 0, 1)
            }
        }
        out[0].to_bits()
    };
    let want = run(false);
    // SAFETY: the child only computes on this stack's memory (no allocation, no locks) and
    // leaves with _exit; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return false;
        }
        if pid == 0 {
            let ok = run(true) == want;
            libc::_exit(if ok { 0 } else { 1 });
        }
        let mut status = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            let interrupted = std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
            if r != -1 || !interrupted {
                return false;
            }
        }
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}

/// Eight i32 lanes, each the sum of four u8 x i8 products (`u` unsigned, `s` signed).
trait Dot {
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;
}

struct Avx2;
impl Dot for Avx2 {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        // No saturation: |u x s| pairs stay below 2^15 for 4-bit and sign-folded 8-bit values.
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
}

struct Vnni;
impl Dot for Vnni {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
}

/// One quantized matmul: raw views of the operands (a task reads its own columns).
struct Problem<W, X> {
    /// `[n, kb]` weight blocks, columns grouped (see `COLUMN_GROUP`).
    w: *const W,
    /// `[m, kb]` activation blocks.
    x: *const X,
    /// Activation scales `d` and (for weights with a min term) `s` in f32, `[m / 4 (rounded
    /// up), kb]` lanes of 4 rows; `xs` is empty for types without one.
    xd: *const [f32; 4],
    xs: *const [f32; 4],
    /// `[m, n]` outputs.
    out: *mut f32,
    m: usize,
    n: usize,
    kb: usize,
}

/// Q4_1 weights x Q8_1 activations.
type Q4Problem = Problem<BlockQ4_1, BlockQ8_1>;
/// Q8_0 weights x Q8_0 activations (no min term).
type Q8Problem = Problem<BlockQ8_0, BlockQ8_0>;

// SAFETY: tasks read the shared inputs and write disjoint output columns.
unsafe impl<W, X> Sync for Problem<W, X> {}

/// An R x C tile of Q4_1 outputs: rows `r0..r0+R`, columns `c0..c0+C`.
#[allow(clippy::needless_range_loop)] // rows and columns index parallel register arrays
#[inline(always)]
unsafe fn q4_1_tile<I: Dot, const R: usize, const C: usize>(p: &Q4Problem, r0: usize, c0: usize) {
    let kb = p.kb;
    let low = _mm256_set1_epi8(0x0F);
    let w: [*const BlockQ4_1; C] = std::array::from_fn(|c| column(p.w, kb, c0 + c));
    let x = p.x.add(r0 * kb);
    let (xd, xs) = (p.xd.add(r0 / 4 * kb), p.xs.add(r0 / 4 * kb));
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut summs = [_mm_setzero_ps(); C];
    for b in 0..kb {
        let mut qx = [_mm256_setzero_si256(); C];
        let mut wd = [_mm256_setzero_ps(); C];
        let s4 = _mm_loadu_ps((*xs.add(b)).as_ptr());
        prefetch_ahead(w[0], b);
        for c in 0..C {
            let wb = w[c].add(b * G);
            // d and m side by side: [d, m, 0, 0] in f32 (exact conversions).
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                wb as *const i32,
            )));
            wd[c] = _mm256_broadcastss_ps(dm);
            // Lane r: m * s_r + summs (fused), the min term of row r in block order.
            summs[c] = _mm_fmadd_ps(_mm_shuffle_ps::<0b0101_0101>(dm, dm), s4, summs[c]);
            let tmp = _mm_loadu_si128((*wb).qs.as_ptr() as *const __m128i);
            qx[c] = _mm256_and_si256(low, _mm256_set_m128i(_mm_srli_epi16::<4>(tmp), tmp));
        }
        for r in 0..R {
            let qy = _mm256_loadu_si256((*x.add(r * kb + b)).qs.as_ptr() as *const __m256i);
            let xdr = _mm256_set1_ps((*xd.add(b))[r]);
            for c in 0..C {
                let prod = _mm256_cvtepi32_ps(I::dot(qx[c], qy));
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(wd[c], xdr), prod, acc[r][c]);
            }
        }
    }
    for c in 0..C {
        let mut s = [0f32; 4];
        _mm_storeu_ps(s.as_mut_ptr(), summs[c]);
        for r in 0..R {
            *p.out.add((r0 + r) * p.n + c0 + c) = hsum8(acc[r][c]) + s[r];
        }
    }
}

/// An R x C tile of Q8_0 outputs.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn q8_0_tile<I: Dot, const R: usize, const C: usize>(p: &Q8Problem, r0: usize, c0: usize) {
    let kb = p.kb;
    let w: [*const BlockQ8_0; C] = std::array::from_fn(|c| column(p.w, kb, c0 + c));
    let x = p.x.add(r0 * kb);
    let xd = p.xd.add(r0 / 4 * kb);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for b in 0..kb {
        let mut qx = [_mm256_setzero_si256(); C];
        let mut ax = [_mm256_setzero_si256(); C];
        let mut wd = [_mm256_setzero_ps(); C];
        prefetch_ahead(w[0], b);
        for c in 0..C {
            let wb = w[c].add(b * G);
            let d = std::ptr::read_unaligned(wb as *const u16) as i32;
            wd[c] = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(d)));
            qx[c] = _mm256_loadu_si256((*wb).qs.as_ptr() as *const __m256i);
            // ggml's sign folding: |w| as unsigned, x takes w's sign.
            ax[c] = _mm256_sign_epi8(qx[c], qx[c]);
        }
        for r in 0..R {
            let qy = _mm256_loadu_si256((*x.add(r * kb + b)).qs.as_ptr() as *const __m256i);
            let xdr = _mm256_set1_ps((*xd.add(b))[r]);
            for c in 0..C {
                let sy = _mm256_sign_epi8(qy, qx[c]);
                let prod = _mm256_cvtepi32_ps(I::dot(ax[c], sy));
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(wd[c], xdr), prod, acc[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            *p.out.add((r0 + r) * p.n + c0 + c) = hsum8(acc[r][c]);
        }
    }
}

/// Columns `c0..c1` of one row group: C-wide tiles, then single columns.
macro_rules! row_group {
    ($tile:ident, $I:ty, $R:literal, $C:literal, $p:expr, $r0:expr, $c0:expr, $c1:expr) => {{
        let mut c = $c0;
        while c + $C <= $c1 {
            $tile::<$I, $R, $C>($p, $r0, c);
            c += $C;
        }
        while c < $c1 {
            $tile::<$I, $R, 1>($p, $r0, c);
            c += 1;
        }
    }};
}

/// One task: columns `c0..c1` for every row, four rows at a time, with the given tile widths
/// for groups of 4, 3, 2 and 1 rows.
macro_rules! task {
    ($name:ident, $tile:ident, $P:ty, $I:ty, [$c4:literal, $c3:literal, $c2:literal, $c1w:literal] $(, $feat:literal)?) => {
        $(#[target_feature(enable = $feat)])?
        unsafe fn $name(p: &$P, c0: usize, c1: usize) {
            let mut r0 = 0;
            while r0 < p.m {
                match (p.m - r0).min(4) {
                    4 => row_group!($tile, $I, 4, $c4, p, r0, c0, c1),
                    3 => row_group!($tile, $I, 3, $c3, p, r0, c0, c1),
                    2 => row_group!($tile, $I, 2, $c2, p, r0, c0, c1),
                    _ => row_group!($tile, $I, 1, $c1w, p, r0, c0, c1),
                }
                r0 += 4;
            }
        }
    };
}

// AVX2 has 16 vector registers: 4 x 2 tiles for 4 rows; VNNI's EVEX encoding has 32: 4 x 4.
task!(q4_1_task_avx2, q4_1_tile, Q4Problem, Avx2, [2, 2, 4, 4]);
task!(q8_0_task_avx2, q8_0_tile, Q8Problem, Avx2, [2, 2, 4, 4]);
task!(
    q4_1_task_vnni,
    q4_1_tile,
    Q4Problem,
    Vnni,
    [4, 4, 4, 4],
    "avx512f,avx512vl,avx512bw,avx512vnni"
);
task!(
    q8_0_task_vnni,
    q8_0_tile,
    Q8Problem,
    Vnni,
    [4, 4, 4, 4],
    "avx512f,avx512vl,avx512bw,avx512vnni"
);

/// Columns per task: at least four tasks per thread where the width allows, a multiple of
/// 8, at most 64 (a task's weights stay in L2 while it sweeps the rows).
fn task_cols(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (n / (4 * threads) / 8 * 8).clamp(8, 64)
}

/// Activation scales regrouped as lanes of four rows: `[m / 4 (rounded up), kb]`.
fn by_four(m: usize, kb: usize, scale: impl Fn(usize, usize) -> f32) -> Vec<[f32; 4]> {
    let mut v = vec![[0f32; 4]; m.div_ceil(4) * kb];
    for r in 0..m {
        for b in 0..kb {
            v[r / 4 * kb + b][r % 4] = scale(r, b);
        }
    }
    v
}

/// Blocks per row of an `[m, kb] x [n, kb]^T -> [m, n]` product, its operands' lengths
/// checked (the weights padded to whole column groups); `None` when there is nothing to do.
fn blocks_per_row(m: usize, n: usize, x: usize, w: usize, out: usize) -> Option<usize> {
    if m == 0 || n == 0 {
        return None;
    }
    let kb = x / m;
    assert!(x == m * kb && w == n.div_ceil(G) * G * kb && out == m * n);
    Some(kb)
}

/// A problem's column tasks, in parallel, with the task kernel of `isa`.
///
/// # Safety
/// `p` holds sizes its kernels may trust (checked by the caller), each task writes only its
/// own columns, and the VNNI kernel is passed only where [`cpu_isa`] probed it.
unsafe fn run_tasks<P: Sync>(
    p: &P,
    n: usize,
    isa: CpuIsa,
    avx2: unsafe fn(&P, usize, usize),
    vnni: unsafe fn(&P, usize, usize),
) {
    let task = match isa {
        CpuIsa::Avx2 => avx2,
        CpuIsa::Avx512Vnni => vnni,
    };
    let tc = task_cols(n);
    (0..n.div_ceil(tc))
        .into_par_iter()
        // SAFETY: as the function's contract says.
        .for_each(|t| unsafe { task(p, t * tc, ((t + 1) * tc).min(n)) });
}

/// `out[m, n] = x[m, kb] . w[n, kb]^T` for Q4_1 weights and Q8_1 activations.
pub fn gemm_q4_1(w: &[BlockQ4_1], x: &[BlockQ8_1], m: usize, n: usize, out: &mut [f32]) {
    gemm_with(cpu_isa(), w, x, m, n, out)
}

/// `out[m, n] = x[m, kb] . w[n, kb]^T` for Q8_0 weights and Q8_0 activations.
pub fn gemm_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0], m: usize, n: usize, out: &mut [f32]) {
    gemm_with(cpu_isa(), w, x, m, n, out)
}

/// A weight block type our kernels multiply: the activation blocks it pairs with, how their
/// scales read, and its column tasks.
trait GemmWeight: Sized {
    type Act;
    /// Whether the weight has a min term (then the activations' `s` is read too).
    const HAS_MIN: bool;
    const TASKS: TaskKernels<Problem<Self, Self::Act>>;
    /// The activation block's `d`, and its `s` where the weight has a min term (else 0).
    fn act_scales(x: &Self::Act) -> (f32, f32);
}

impl GemmWeight for BlockQ4_1 {
    type Act = BlockQ8_1;
    const HAS_MIN: bool = true;
    const TASKS: TaskKernels<Q4Problem> = (q4_1_task_avx2, q4_1_task_vnni);
    fn act_scales(x: &BlockQ8_1) -> (f32, f32) {
        (x.d.to_f32(), x.s.to_f32())
    }
}

impl GemmWeight for BlockQ8_0 {
    type Act = BlockQ8_0;
    const HAS_MIN: bool = false;
    const TASKS: TaskKernels<Q8Problem> = (q8_0_task_avx2, q8_0_task_vnni);
    fn act_scales(x: &BlockQ8_0) -> (f32, f32) {
        (x.d.to_f32(), 0.0)
    }
}

/// The column tasks of pointer type `P`: the AVX2 kernel, then the VNNI one.
type TaskKernels<P> = (unsafe fn(&P, usize, usize), unsafe fn(&P, usize, usize));

/// `out[m, n] = x[m, kb] . w[n, kb]^T` with the column tasks of `isa` (tests pass each ISA
/// that [`cpu_isa`] can choose here).
fn gemm_with<W: GemmWeight>(
    isa: CpuIsa,
    w: &[W],
    x: &[W::Act],
    m: usize,
    n: usize,
    out: &mut [f32],
) {
    let Some(kb) = blocks_per_row(m, n, x.len(), w.len(), out.len()) else {
        return;
    };
    let xd = by_four(m, kb, |r, b| W::act_scales(&x[r * kb + b]).0);
    let xs = match W::HAS_MIN {
        true => by_four(m, kb, |r, b| W::act_scales(&x[r * kb + b]).1),
        false => Vec::new(),
    };
    let p = Problem {
        w: w.as_ptr(),
        x: x.as_ptr(),
        xd: xd.as_ptr(),
        xs: xs.as_ptr(),
        out: out.as_mut_ptr(),
        m,
        n,
        kb,
    };
    let (avx2, vnni) = W::TASKS;
    // SAFETY: the sizes are checked above; the VNNI form runs only where `cpu_isa` probed it
    // (tests pass that choice back in).
    unsafe { run_tasks(&p, n, isa, avx2, vnni) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::{quantize_row_q8, QK};
    use crate::quant::columns::interleave;
    use crate::quant::dots::{dot_q4_1_q8_1, dot_q8_0_q8_0};
    use half::f16;

    use crate::quant::tests::rand_f32;

    fn isas() -> Vec<CpuIsa> {
        let mut v = vec![CpuIsa::Avx2];
        if cpu_isa() == CpuIsa::Avx512Vnni {
            v.push(CpuIsa::Avx512Vnni);
        }
        v
    }

    /// Every shape of tile and remainder: each element is the lone dot product's bits.
    #[test]
    fn tiled_gemm_equals_lone_dot_products_bit_for_bit() {
        let mut seed = 3;
        for (m, n, kb) in [
            (1, 1, 1),
            (1, 13, 3),
            (2, 9, 2),
            (3, 17, 5),
            (4, 8, 18),
            (7, 33, 4),
            (9, 70, 18),
            (17, 24, 7),
            (1, 5, 48),
        ] {
            let k = kb * QK;
            let xf = rand_f32(m * k, &mut seed);
            let mut x1 = vec![BlockQ8_1::default(); m * kb];
            let mut x8 = vec![BlockQ8_0::default(); m * kb];
            for r in 0..m {
                quantize_row_q8(&xf[r * k..(r + 1) * k], &mut x1[r * kb..(r + 1) * kb]);
                quantize_row_q8(&xf[r * k..(r + 1) * k], &mut x8[r * kb..(r + 1) * kb]);
            }
            let wf = rand_f32(n * k, &mut seed);
            let mut w8 = vec![BlockQ8_0::default(); n * kb];
            for c in 0..n {
                quantize_row_q8(&wf[c * k..(c + 1) * k], &mut w8[c * kb..(c + 1) * kb]);
            }
            // -128 is a legal Q8_0 weight (not produced by ggml's quantizer): sign folding
            // must still give its exact products.
            w8[0].qs[5] = -128;
            let w4: Vec<BlockQ4_1> = (0..n * kb)
                .map(|i| {
                    let mut qs = [0u8; 16];
                    for (j, q) in qs.iter_mut().enumerate() {
                        *q = ((i * 37 + j * 11) % 256) as u8;
                    }
                    BlockQ4_1 {
                        d: f16::from_f32(0.004 + (i % 7) as f32 * 0.001),
                        m: f16::from_f32(-0.03 - (i % 5) as f32 * 0.002),
                        qs,
                    }
                })
                .collect();
            for isa in isas() {
                let mut o4 = vec![0f32; m * n];
                let mut o8 = vec![0f32; m * n];
                let (g4, g8) = (interleave(w4.clone(), n, kb), interleave(w8.clone(), n, kb));
                gemm_with(isa, &g4, &x1, m, n, &mut o4);
                gemm_with(isa, &g8, &x8, m, n, &mut o8);
                for r in 0..m {
                    for c in 0..n {
                        let xr = r * kb..(r + 1) * kb;
                        let wc = c * kb..(c + 1) * kb;
                        assert_eq!(
                            o4[r * n + c].to_bits(),
                            dot_q4_1_q8_1(&w4[wc.clone()], &x1[xr.clone()]).to_bits(),
                            "q4_1 {isa:?} m={m} n={n} kb={kb} ({r}, {c})"
                        );
                        assert_eq!(
                            o8[r * n + c].to_bits(),
                            dot_q8_0_q8_0(&w8[wc], &x8[xr]).to_bits(),
                            "q8_0 {isa:?} m={m} n={n} kb={kb} ({r}, {c})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_isa_is_probed_not_assumed() {
        // VNNI only where the CPU and OS report it and the forked probe ran it correctly.
        if cpu_isa() == CpuIsa::Avx512Vnni {
            assert!(vnni_reported() && vnni_probe());
        } else if !crate::env::get().cpu_isa_avx2 {
            assert!(!(vnni_reported() && vnni_probe()));
        }
    }
}
