//! The column-grouped weight layout the tiled CPU matmul reads.

/// Columns whose blocks lie side by side: block `b` of columns `4g..4g+4` is stored as four
/// consecutive blocks, so a register tile of up to four columns reads one forward stream
/// (four separate column streams read ~3.5x slower from memory on this project's CPU kind).
/// One (GGUF's own layout) where the tiled kernels are not built.
pub const COLUMN_GROUP: usize = if cfg!(x86_v3) { 4 } else { 1 };

/// GGUF's `[n, kb]` blocks regrouped by [`COLUMN_GROUP`]; a last partial group is padded with
/// copies of the last column (read by no tile: tiles stop at `n`).
pub(crate) fn interleave<T: Copy>(rows: Vec<T>, n: usize, kb: usize) -> Vec<T> {
    let g = COLUMN_GROUP;
    if g == 1 || n == 0 {
        return rows;
    }
    let mut out = Vec::with_capacity(n.div_ceil(g) * g * kb);
    for group in 0..n.div_ceil(g) {
        for b in 0..kb {
            for j in 0..g {
                out.push(rows[(group * g + j).min(n - 1) * kb + b]);
            }
        }
    }
    out
}
