//! `y = x W^T` for GGUF-quantized `W` kept in its blocks.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::blocks::{BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use super::columns::interleave;
use super::{quantize_row_q8, Q8Block};
use crate::error::{EngineError, Result};
use crate::ops::with_f32;

/// Weights in a layout our kernels read: GGUF's blocks, with the columns (output features)
/// interleaved in groups of [`COLUMN_GROUP`] (build them with [`QuantWeights::q4_1`] /
/// [`QuantWeights::q8_0`]).
pub enum QuantWeights {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
}

impl QuantWeights {
    /// From GGUF's row-major `[n, k / 32]` Q4_1 blocks.
    pub fn q4_1(blocks: Vec<BlockQ4_1>, n: usize, k: usize) -> Self {
        Self::Q4_1(interleave(blocks, n, k / QK))
    }

    /// From GGUF's row-major `[n, k / 32]` Q8_0 blocks.
    pub fn q8_0(blocks: Vec<BlockQ8_0>, n: usize, k: usize) -> Self {
        Self::Q8_0(interleave(blocks, n, k / QK))
    }
}

/// A linear layer: our kernels for the types we have them for, candle's otherwise.
pub enum QuantLinear {
    Own { w: QuantWeights, n: usize, k: usize },
    Candle(QMatMul),
}

impl QuantLinear {
    /// From raw GGUF bytes of a `[n, k]` weight.
    pub fn new(qt: QTensor, raw: &[u8], device: &Device) -> Result<Self> {
        let (n, k) = qt.shape().dims2()?;
        let own = device.is_cpu() && k % QK == 0;
        Ok(match qt.dtype() {
            GgmlDType::Q4_1 if own => Self::Own {
                w: QuantWeights::q4_1(super::blocks::cast_blocks(raw), n, k),
                n,
                k,
            },
            GgmlDType::Q8_0 if own => Self::Own {
                w: QuantWeights::q8_0(super::blocks::cast_blocks(raw), n, k),
                n,
                k,
            },
            _ => Self::Candle(QMatMul::from_qtensor(qt)?),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut ys = Self::forward_many(&[self], x)?;
        Ok(ys.remove(0))
    }

    /// Several layers over the same input (Q/K/V, gate/up): the activation rows are
    /// quantized once for all of them. The same results as separate `forward` calls.
    pub fn forward_many(layers: &[&QuantLinear], x: &Tensor) -> Result<Vec<Tensor>> {
        // Our kernels' weights, or candle's matmuls one by one when any layer is candle's.
        let own: Option<Vec<(&QuantWeights, usize, usize)>> = layers
            .iter()
            .map(|l| match l {
                Self::Own { w, n, k } => Some((w, *n, *k)),
                Self::Candle(_) => None,
            })
            .collect();
        let Some(own) = own else {
            return layers
                .iter()
                .map(|l| match l {
                    Self::Candle(m) => Ok(m.forward(x)?),
                    ours => ours.forward(x),
                })
                .collect();
        };
        let (m, kx) = x.dims2()?;
        if let Some((_, _, k)) = own.iter().find(|(_, _, k)| *k != kx) {
            return Err(EngineError::Shape(format!(
                "matmul: input width {kx}, weight width {k}"
            )));
        }
        let need = |q4: bool| {
            own.iter()
                .any(|(w, _, _)| matches!(w, QuantWeights::Q4_1(_)) == q4)
        };
        let outs = with_f32(x, |xd| {
            let rows = QuantizedRows::new(xd, m, kx, need(true), need(false));
            own.iter()
                .map(|(w, n, _)| rows.matmul(w, *n))
                .collect::<Vec<_>>()
        })?;
        own.iter()
            .zip(outs)
            .map(|((_, n, _), out)| Ok(Tensor::from_vec(out, (m, *n), x.device())?))
            .collect()
    }
}

/// Activation rows quantized the way each weight type pairs with: Q8_1 for Q4_1 weights,
/// Q8_0 for Q8_0 weights (ggml's `vec_dot_type`s).
struct QuantizedRows {
    m: usize,
    q8_1: Vec<BlockQ8_1>,
    q8_0: Vec<BlockQ8_0>,
}

impl QuantizedRows {
    fn new(x: &[f32], m: usize, k: usize, q8_1: bool, q8_0: bool) -> Self {
        // Each of the `m` rows of `x` quantized into its `k / 32` blocks (none if not needed).
        fn rows<B: Q8Block + Default>(x: &[f32], k: usize, wanted: bool) -> Vec<B> {
            if !wanted {
                return Vec::new();
            }
            let mut out = vec![B::default(); x.len() / k * (k / QK)];
            for (row, blocks) in x.chunks_exact(k).zip(out.chunks_exact_mut(k / QK)) {
                quantize_row_q8(row, blocks);
            }
            out
        }
        let x = &x[..m * k];
        Self {
            m,
            q8_1: rows(x, k, q8_1),
            q8_0: rows(x, k, q8_0),
        }
    }

    /// `[m, n]` outputs of one weight.
    fn matmul(&self, w: &QuantWeights, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.m * n];
        match w {
            QuantWeights::Q4_1(wb) => gemm_q4_1(wb, &self.q8_1, self.m, n, &mut out),
            QuantWeights::Q8_0(wb) => gemm_q8_0(wb, &self.q8_0, self.m, n, &mut out),
        }
        out
    }
}

#[cfg(x86_v3)]
use super::gemm::{gemm_q4_1, gemm_q8_0};
#[cfg(not(x86_v3))]
use portable_gemm::{gemm_q4_1, gemm_q8_0};

/// Without AVX2: one portable dot product per output element, parallel over columns.
#[cfg(not(x86_v3))]
mod portable_gemm {
    use rayon::prelude::*;

    use crate::quant::blocks::{BlockQ4_1, BlockQ8_0, BlockQ8_1};
    use crate::quant::dots::{dot_q4_1_q8_1, dot_q8_0_q8_0};

    fn gemm_portable<W: Sync, X: Sync>(
        w: &[W],
        x: &[X],
        m: usize,
        n: usize,
        out: &mut [f32],
        dot: impl Fn(&[W], &[X]) -> f32 + Sync,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let kb = x.len() / m;
        let mut t = vec![0f32; n * m];
        t.par_chunks_mut(m).enumerate().for_each(|(c, col)| {
            for (r, o) in col.iter_mut().enumerate() {
                *o = dot(&w[c * kb..(c + 1) * kb], &x[r * kb..(r + 1) * kb]);
            }
        });
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = t[c * m + r];
            }
        }
    }

    pub fn gemm_q4_1(w: &[BlockQ4_1], x: &[BlockQ8_1], m: usize, n: usize, out: &mut [f32]) {
        gemm_portable(w, x, m, n, out, dot_q4_1_q8_1)
    }

    pub fn gemm_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0], m: usize, n: usize, out: &mut [f32]) {
        gemm_portable(w, x, m, n, out, dot_q8_0_q8_0)
    }
}
