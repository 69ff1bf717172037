//! One quantized matmul as the column tasks see it (`gemm.rs` builds it, the `tiles*.rs`
//! kernels run it) and the activation scales they read.

use super::blocks::{BlockQ8_0, BlockQ8_1};
use super::kblocks::BlockQ8K;

/// One quantized matmul: raw views of the operands (a task reads its own columns).
pub(super) struct Problem<W, X> {
    /// The weights: `[n, kb]` blocks (K-quants), or `[n / 4 (rounded up), kb]` groups of four
    /// columns (the 32-value types, `groups.rs`).
    pub w: *const W,
    /// `[m, kb]` activation blocks.
    pub x: *const X,
    /// Activation scales `d` and (for weights with a min term) `s` in f32, `[m / 4 (rounded
    /// up), kb]` lanes of 4 rows; empty where the tiles read them from the blocks.
    pub xd: *const [f32; 4],
    pub xs: *const [f32; 4],
    /// `[m, kb]`: `-o` times the sum of each of a block's eight lanes of four activation
    /// values (`o`: the weight type's offset, `tiles32.rs`); null where no kernel reads it.
    pub xc: *const [i32; 8],
    /// `[m, n]` outputs.
    pub out: *mut f32,
    pub m: usize,
    pub n: usize,
    pub kb: usize,
}

// SAFETY: tasks read the shared inputs and write disjoint output columns.
unsafe impl<W, X> Sync for Problem<W, X> {}

/// The column tasks of problem type `P`: the AVX2 kernel, then the VNNI one.
pub(super) type TaskKernels<P> = (unsafe fn(&P, usize, usize), unsafe fn(&P, usize, usize));

/// An activation block's scale `d` and Q8_1's `s = d * sum(q)` (0 for the others).
pub trait ActScales {
    fn d(&self) -> f32;
    fn s(&self) -> f32 {
        0.0
    }
}

impl ActScales for BlockQ8_0 {
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
}

impl ActScales for BlockQ8_1 {
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    fn s(&self) -> f32 {
        self.s.to_f32()
    }
}

impl ActScales for BlockQ8K {
    fn d(&self) -> f32 {
        self.d
    }
}
