//! The x86 quantized matmul's driver: the instruction set (probed), the problem handed to the
//! column tasks, and `out[m, n] = x[m, k] . w[n, k]^T` for each weight type.
//!
//! Each rayon task owns a range of output columns and sweeps the activation rows in tiles
//! (`tiles32.rs`, `tiles_k.rs`). Every output element is exactly ggml's dot product for its
//! type (`dots.rs`), whatever the batch, the tile shape, the thread count or the instruction
//! set: results never depend on how many requests share a step.
//!
//! Instruction sets: AVX2 (the build's baseline) or AVX-512 VNNI (`vpdpbusd`/`vpdpwssd` fuse
//! the `maddubs` + `madd` pairs; 32 vector registers allow wider tiles). VNNI is used only
//! where the CPU reports it, the OS has enabled the AVX-512 state, and a forked child ran the
//! kernel and got the AVX2 kernel's bits (these VMs advertise AMX yet die on it, so a CPUID
//! flag alone is not trusted). `FERROLM_CPU_ISA=avx2` forces AVX2.

use std::marker::PhantomData;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use super::groups::{Grouped, GROUP as G};
use super::isa::CpuIsa;
use super::kblocks::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use super::problem::{ActScales, Problem, TaskKernels};
use super::tiles32::{x_qs, Group32};
use super::{tiles32, tiles32_512, tiles_k, tiles_k512};

static ISA: OnceLock<CpuIsa> = OnceLock::new();

/// The best instruction set this machine runs (probed once: a fact about the machine, not
/// a switch).
pub fn cpu_isa() -> CpuIsa {
    *ISA.get_or_init(|| {
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
    // One column group (all four columns the same): block b at b.
    let wg = [BlockQ4_1::group([w[0]; G]), BlockQ4_1::group([w[1]; G])];
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
        let p = Problem::<_, BlockQ8_1> {
            w: wg.as_ptr(),
            x: x.as_ptr(),
            xd: xd.as_ptr(),
            xs: xs.as_ptr(),
            xc: std::ptr::null(),
            out: out.as_mut_ptr(),
            m: 1,
            n: 1,
            kb: 2,
        };
        // SAFETY: the pointers cover m x kb activation blocks, one column group of kb blocks,
        // m x n outputs; the VNNI form runs only in the child below.
        let (avx2, vnni_task) = BlockQ4_1::TASKS;
        unsafe {
            if vnni {
                vnni_task(&p, 0, 1)
            } else {
                avx2(&p, 0, 1)
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

/// A prepared matmul's column tasks, run by [`run_many`].
pub trait ColumnTasks: Sync {
    fn count(&self) -> usize;
    /// Task `t`: its own columns, every row.
    fn run(&self, t: usize);
}

/// What a prepared matmul borrows: weights, activations, outputs.
type Operands<'a, W> = (
    &'a [<W as GemmWeight>::Stored],
    &'a [<W as GemmWeight>::Act],
    &'a mut [f32],
);

/// A weight type's column task.
type Task<W> = unsafe fn(&Problem<<W as GemmWeight>::Stored, <W as GemmWeight>::Act>, usize, usize);

/// One matmul ready to run: its problem, the buffers it points into, its task kernel.
pub struct Prepared<'a, W: GemmWeight> {
    p: Problem<W::Stored, W::Act>,
    task: Task<W>,
    cols_per_task: usize,
    // What `p` points into (heap blocks: moving the vectors moves no data).
    _scales: (Vec<[f32; 4]>, Vec<[f32; 4]>),
    _corrections: Vec<[i32; 8]>,
    _borrows: PhantomData<Operands<'a, W>>,
}

impl<W: GemmWeight> ColumnTasks for Prepared<'_, W> {
    fn count(&self) -> usize {
        self.p.n.div_ceil(self.cols_per_task)
    }

    fn run(&self, t: usize) {
        let c0 = t * self.cols_per_task;
        let c1 = (c0 + self.cols_per_task).min(self.p.n);
        // SAFETY: `prepare` checked the sizes and chose a kernel the machine runs; each task
        // writes only its own columns.
        unsafe { (self.task)(&self.p, c0, c1) }
    }
}

/// Every task of several prepared matmuls in one parallel loop: the layers that share an
/// input (Q/K/V, gate/up) cost one fork-join, not one each (a decode step is hundreds of
/// short loops, and each join waits for its slowest task).
pub fn run_many(jobs: &[&dyn ColumnTasks]) {
    let tasks: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.count()).map(move |t| (j, t)))
        .collect();
    tasks.into_par_iter().for_each(|(j, t)| jobs[j].run(t));
}

/// A weight block type our kernels multiply: the activation blocks it pairs with, how the
/// tiles read their scales, its layout and its column tasks.
pub trait GemmWeight: Sized + Sync {
    type Act: ActScales + Sync;
    /// What the kernels read: groups of four columns (the 32-value types) or GGUF's blocks.
    type Stored: Sync;
    /// Where the tiles want the activations' `d` (and `s`) gathered as lanes of four rows (the
    /// 32-value types); the K-quant tiles read them from the blocks.
    const GATHER_SCALES: bool;
    /// Whether the weight has a min term (then the activations' `s` is gathered too).
    const HAS_MIN: bool;
    /// The offset of the unsigned values the tiles multiply (`Problem::xc`); 0: none.
    const OFFSET: u8;
    /// The AVX2 tiles multiply signed values (no offset, no `xc`).
    const SIGNED_AVX2: bool;
    /// Whether the weights are stored as column groups (`groups.rs`), else GGUF's rows.
    const GROUPED: bool;
    #[doc(hidden)]
    const TASKS: TaskKernels<Problem<Self::Stored, Self::Act>>;
    /// GGUF's row-major `[n, kb]` blocks as the kernels store them (`matmul.rs` builds them
    /// per type; the tests generically).
    #[cfg(test)]
    fn store(rows: &[Self], n: usize, kb: usize) -> Vec<Self::Stored>;
}

macro_rules! block32_weight {
    ($W:ty, $X:ty) => {
        impl GemmWeight for $W {
            type Act = $X;
            type Stored = <$W as Grouped>::Group;
            const GATHER_SCALES: bool = true;
            const HAS_MIN: bool = <$W as Group32>::HAS_MIN;
            const OFFSET: u8 = <$W as Group32>::OFFSET;
            const SIGNED_AVX2: bool = <$W as Group32>::SIGNED_AVX2;
            const GROUPED: bool = true;
            const TASKS: TaskKernels<Problem<Self::Stored, $X>> = (
                tiles32::task_avx2::<$W, $X>,
                tiles32_512::task_vnni::<$W, $X>,
            );
            #[cfg(test)]
            fn store(rows: &[Self], n: usize, kb: usize) -> Vec<Self::Stored> {
                super::groups::group_columns(rows, n, kb)
            }
        }
    };
}

block32_weight!(BlockQ4_0, BlockQ8_0);
block32_weight!(BlockQ4_1, BlockQ8_1);
block32_weight!(BlockQ5_0, BlockQ8_0);
block32_weight!(BlockQ5_1, BlockQ8_1);
block32_weight!(BlockQ8_0, BlockQ8_0);

macro_rules! k_weight {
    ($W:ty) => {
        impl GemmWeight for $W {
            type Act = BlockQ8K;
            type Stored = $W;
            const GATHER_SCALES: bool = false;
            const HAS_MIN: bool = false;
            const OFFSET: u8 = 0;
            const SIGNED_AVX2: bool = false;
            const GROUPED: bool = false;
            const TASKS: TaskKernels<Problem<Self, BlockQ8K>> =
                (tiles_k::task_avx2::<$W>, tiles_k512::task_vnni::<$W>);
            #[cfg(test)]
            fn store(rows: &[Self], _n: usize, _kb: usize) -> Vec<Self> {
                rows.to_vec()
            }
        }
    };
}

k_weight!(BlockQ4K);
k_weight!(BlockQ5K);
k_weight!(BlockQ6K);

/// `out[m, n] = x[m, kb] . w[n, kb]^T` with the column tasks of `isa` (narrowed to what
/// [`cpu_isa`] probed), in parallel or as one task: weights in the layout `W::GROUPED` says, activations quantized as
/// `W::Act`. (The tests' entry; `matmul.rs` runs several through [`prepare`] and
/// [`run_many`].)
#[cfg(test)]
pub fn gemm<W: GemmWeight>(
    isa: CpuIsa,
    w: &[W::Stored],
    x: &[W::Act],
    (m, n): (usize, usize),
    out: &mut [f32],
    one_task: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let prep = prepare::<W>(isa, w, x, m, n, out);
    match one_task {
        // One task over every column: the tiles' widest forms (a parallel run's tasks may be
        // too narrow to reach them). SAFETY: as `Prepared::run`.
        true => unsafe { (prep.task)(&prep.p, 0, n) },
        false => run_many(&[&prep]),
    }
}

/// Each activation block's eight lanes' `-o * (sum of the lane's four values)`.
fn corrections<X>(x: &[X], offset: u8) -> Vec<[i32; 8]> {
    x.iter()
        .map(|blk| {
            // SAFETY: the 32-value types' activation blocks (Q8_0, Q8_1) end with their 32
            // values.
            let qs = unsafe { std::slice::from_raw_parts(x_qs(blk) as *const i8, 32) };
            std::array::from_fn(|l| {
                -(offset as i32) * qs[4 * l..4 * l + 4].iter().map(|&q| q as i32).sum::<i32>()
            })
        })
        .collect()
}

/// `out[m, n] = x[m, kb] . w[n, kb]^T` (see `gemm`), checked and ready for [`run_many`]
/// (`m`, `n` not zero).
pub fn prepare<'a, W: GemmWeight>(
    isa: CpuIsa,
    w: &'a [W::Stored],
    x: &'a [W::Act],
    m: usize,
    n: usize,
    out: &'a mut [f32],
) -> Prepared<'a, W> {
    assert!(m > 0 && n > 0);
    let isa = match cpu_isa() {
        CpuIsa::Avx512Vnni => isa,
        probed => probed,
    };
    let kb = x.len() / m;
    let stored = if W::GROUPED { n.div_ceil(G) } else { n };
    assert!(x.len() == m * kb && w.len() == stored * kb && out.len() == m * n);
    let gather = |f: fn(&W::Act) -> f32| by_four(m, kb, |r, b| f(&x[r * kb + b]));
    let xd = match W::GATHER_SCALES {
        true => gather(W::Act::d),
        false => Vec::new(),
    };
    let xs = match W::GATHER_SCALES && W::HAS_MIN {
        true => gather(W::Act::s),
        false => Vec::new(),
    };
    let xc = match (W::OFFSET, isa) {
        (0, _) => Vec::new(),
        (_, CpuIsa::Portable | CpuIsa::Avx2) if W::SIGNED_AVX2 => Vec::new(),
        (o, _) => corrections(x, o),
    };
    let p = Problem {
        w: w.as_ptr(),
        x: x.as_ptr(),
        xd: xd.as_ptr(),
        xs: xs.as_ptr(),
        xc: match xc.is_empty() {
            true => std::ptr::null(),
            false => xc.as_ptr(),
        },
        out: out.as_mut_ptr(),
        m,
        n,
        kb,
    };
    let task = match isa {
        // (Portable is never the probe's answer in an AVX2 build.)
        CpuIsa::Portable | CpuIsa::Avx2 => W::TASKS.0,
        CpuIsa::Avx512Vnni => W::TASKS.1,
    };
    Prepared {
        p,
        task,
        cols_per_task: task_cols(n),
        _scales: (xd, xs),
        _corrections: xc,
        _borrows: PhantomData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::{cast_blocks, PlainBlock, QK};
    use crate::quant::dots::{dot_q4_1_q8_1, dot_q5_0_q8_0, dot_q8_0_q8_0};
    use crate::quant::ggml_fixture;
    use crate::quant::quantize_row_q8;
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
            (1, 37, 2),
            (2, 45, 3),
            (6, 29, 2),
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
            let w5: Vec<BlockQ5_0> = (0..n * kb)
                .map(|i| BlockQ5_0 {
                    d: f16::from_f32(0.003 + (i % 5) as f32 * 0.001),
                    qh: ((i as u32).wrapping_mul(2654435761)).to_le_bytes(),
                    qs: std::array::from_fn(|j| ((i * 29 + j * 13) % 256) as u8),
                })
                .collect();
            let shape = format!("m={m} n={n} kb={kb}");
            check_tiles(&w4, &x1, (m, n), dot_q4_1_q8_1, &format!("q4_1 {shape}"));
            check_tiles(&w8, &x8, (m, n), dot_q8_0_q8_0, &format!("q8_0 {shape}"));
            check_tiles(&w5, &x8, (m, n), dot_q5_0_q8_0, &format!("q5_0 {shape}"));
        }
    }

    /// `[n, kb]` weight rows times `[m, kb]` activation rows through the tiles, in parallel
    /// and as one task, on each instruction set: every element the lone dot product's bits.
    fn check_tiles<W: GemmWeight>(
        w: &[W],
        x: &[W::Act],
        (m, n): (usize, usize),
        dot: fn(&[W], &[W::Act]) -> f32,
        what: &str,
    ) {
        let kb = x.len() / m;
        let stored = W::store(w, n, kb);
        for (isa, one_task) in isas().into_iter().flat_map(|i| [(i, false), (i, true)]) {
            let mut out = vec![0f32; m * n];
            gemm::<W>(isa, &stored, x, (m, n), &mut out, one_task);
            for r in 0..m {
                for c in 0..n {
                    let want = dot(&w[c * kb..(c + 1) * kb], &x[r * kb..(r + 1) * kb]);
                    assert_eq!(
                        out[r * n + c].to_bits(),
                        want.to_bits(),
                        "{what} {isa:?} one_task={one_task} ({r}, {c})"
                    );
                }
            }
        }
    }

    /// One weight type of the ggml fixture through the tiled kernels: the first `m` rows (1,
    /// 4, 16, 33, 64) and the first `n` columns (all 8, or 7 for a partial column group)
    /// give ggml's bits, so results do not depend on the batch either.
    fn check_fixture_type<W>(
        f: &ggml_fixture::Fixture,
        ty: u32,
        bk: usize,
        q: fn(&[f32], &mut [W::Act]),
    ) where
        W: GemmWeight + PlainBlock,
        W::Act: PlainBlock + Default + Clone,
    {
        let case = f.case(ty);
        let kb = f.k / bk;
        let rows: Vec<W> = cast_blocks(case.weights);
        let x = f.quantized::<W::Act>(bk, q);
        for n in [f.n, f.n - 1] {
            let w = W::store(&rows[..n * kb], n, kb);
            for m in [1, 4, 16, 33, 64] {
                for isa in isas() {
                    let mut out = vec![0f32; m * n];
                    gemm::<W>(isa, &w, &x[..m * kb], (m, n), &mut out, m % 2 == 1);
                    for r in 0..m {
                        for c in 0..n {
                            let want = case.out[r * f.n + c];
                            assert_eq!(
                                out[r * n + c].to_bits(),
                                want.to_bits(),
                                "type {ty} {isa:?} m={m} n={n} ({r}, {c}): {} vs ggml {want}",
                                out[r * n + c]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_gives_ggmls_bits_at_any_batch() {
        use crate::quant::ggml_fixture::*;
        use crate::quant::kblocks::{quantize_row_q8_k, QK_K};
        let f = load();
        check_fixture_type::<BlockQ4_0>(&f, Q4_0, QK, quantize_row_q8);
        check_fixture_type::<BlockQ4_1>(&f, Q4_1, QK, quantize_row_q8);
        check_fixture_type::<BlockQ5_0>(&f, Q5_0, QK, quantize_row_q8);
        check_fixture_type::<BlockQ5_1>(&f, Q5_1, QK, quantize_row_q8);
        check_fixture_type::<BlockQ8_0>(&f, Q8_0, QK, quantize_row_q8);
        check_fixture_type::<BlockQ4K>(&f, Q4_K, QK_K, quantize_row_q8_k);
        check_fixture_type::<BlockQ5K>(&f, Q5_K, QK_K, quantize_row_q8_k);
        check_fixture_type::<BlockQ6K>(&f, Q6_K, QK_K, quantize_row_q8_k);
    }

    #[test]
    fn the_isa_is_probed_not_assumed() {
        // VNNI only where the CPU and OS report it and the forked probe ran it correctly.
        if cpu_isa() == CpuIsa::Avx512Vnni {
            assert!(vnni_reported() && vnni_probe());
        } else {
            assert!(!(vnni_reported() && vnni_probe()));
        }
    }
}
