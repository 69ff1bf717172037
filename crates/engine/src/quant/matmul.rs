//! `y = x W^T` for GGUF-quantized `W` kept in its blocks.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;

use super::blocks::*;
use super::dot::{dot4_q4_1_q8_1_s, dot4_q8_0_q8_0_s, dot_q4_1_q8_1, dot_q8_0_q8_0};
use crate::attention::with_f32;
use crate::error::{EngineError, Result};

/// Weights in a layout our kernels read.
pub enum QuantWeights {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
}

/// A linear layer: our kernels for the types we have them for, candle's otherwise.
pub enum QuantLinear {
    Own { w: QuantWeights, n: usize, k: usize },
    Candle(QMatMul),
}

fn cast_blocks<T: Copy>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    bytes
        .chunks_exact(size)
        // SAFETY: T is a repr(C) struct of plain integers/f16 with no invalid bit patterns,
        // and read_unaligned copes with the byte buffer's alignment.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr() as *const T) })
        .collect()
}

impl QuantLinear {
    /// From raw GGUF bytes of a `[n, k]` weight.
    pub fn new(qt: QTensor, raw: &[u8], device: &Device) -> Result<Self> {
        let (n, k) = qt.shape().dims2()?;
        let own = device.is_cpu() && k % QK == 0;
        Ok(match qt.dtype() {
            GgmlDType::Q4_1 if own => Self::Own {
                w: QuantWeights::Q4_1(cast_blocks(raw)),
                n,
                k,
            },
            GgmlDType::Q8_0 if own => Self::Own {
                w: QuantWeights::Q8_0(cast_blocks(raw)),
                n,
                k,
            },
            _ => Self::Candle(QMatMul::from_qtensor(qt)?),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(m) => Ok(m.forward(x)?),
            Self::Own { w, n, k } => {
                let (m, kx) = x.dims2()?;
                if kx != *k {
                    return Err(EngineError::Config(format!(
                        "matmul: input width {kx}, weight width {k}"
                    )));
                }
                let (n, k) = (*n, *k);
                let kb = k / QK;
                let mut out = vec![0f32; m * n];
                with_f32(x, |xd| match w {
                    QuantWeights::Q4_1(wb) => {
                        let mut xq = vec![
                            BlockQ8_1 {
                                d: Default::default(),
                                s: Default::default(),
                                qs: [0; QK]
                            };
                            m * kb
                        ];
                        for r in 0..m {
                            quantize_row_q8_1(
                                &xd[r * k..(r + 1) * k],
                                &mut xq[r * kb..(r + 1) * kb],
                            );
                        }
                        let xrow = |r: usize| &xq[r * kb..(r + 1) * kb];
                        // The activations' scales in f32 once, not once per weight row.
                        let sd: Vec<f32> = xq.iter().map(|b| b.d.to_f32()).collect();
                        let ss: Vec<f32> = xq.iter().map(|b| b.s.to_f32()).collect();
                        let d = |r: usize| &sd[r * kb..(r + 1) * kb];
                        let s = |r: usize| &ss[r * kb..(r + 1) * kb];
                        gemm_by4(
                            &mut out,
                            m,
                            n,
                            |row, col| dot_q4_1_q8_1(&wb[col * kb..(col + 1) * kb], xrow(row)),
                            |row, col| {
                                dot4_q4_1_q8_1_s(
                                    &wb[col * kb..(col + 1) * kb],
                                    [xrow(row), xrow(row + 1), xrow(row + 2), xrow(row + 3)],
                                    [d(row), d(row + 1), d(row + 2), d(row + 3)],
                                    [s(row), s(row + 1), s(row + 2), s(row + 3)],
                                )
                            },
                        );
                    }
                    QuantWeights::Q8_0(wb) => {
                        let mut xq = vec![
                            BlockQ8_0 {
                                d: Default::default(),
                                qs: [0; QK]
                            };
                            m * kb
                        ];
                        for r in 0..m {
                            quantize_row_q8_0(
                                &xd[r * k..(r + 1) * k],
                                &mut xq[r * kb..(r + 1) * kb],
                            );
                        }
                        let xrow = |r: usize| &xq[r * kb..(r + 1) * kb];
                        let sd: Vec<f32> = xq.iter().map(|b| b.d.to_f32()).collect();
                        let d = |r: usize| &sd[r * kb..(r + 1) * kb];
                        gemm_by4(
                            &mut out,
                            m,
                            n,
                            |row, col| dot_q8_0_q8_0(&wb[col * kb..(col + 1) * kb], xrow(row)),
                            |row, col| {
                                dot4_q8_0_q8_0_s(
                                    &wb[col * kb..(col + 1) * kb],
                                    [xrow(row), xrow(row + 1), xrow(row + 2), xrow(row + 3)],
                                    [d(row), d(row + 1), d(row + 2), d(row + 3)],
                                )
                            },
                        );
                    }
                })?;
                Ok(Tensor::from_vec(out, (m, n), x.device())?)
            }
        }
    }
}

/// Fills `out[m, n]` with `dot(row, col)`, parallel over column tiles (each weight row is
/// read once per step for all activation rows), four activation rows at a time: each weight
/// block is unpacked once per four rows. Each (row, col) is the same dot product as alone.
fn gemm_by4(
    out: &mut [f32],
    m: usize,
    n: usize,
    dot: impl Fn(usize, usize) -> f32 + Sync,
    dot4: impl Fn(usize, usize) -> [f32; 4] + Sync,
) {
    const TILE: usize = 64;
    let ptr = out.as_mut_ptr() as usize;
    let m4 = m / 4 * 4;
    (0..n.div_ceil(TILE)).into_par_iter().for_each(|t| {
        let c0 = t * TILE;
        let c1 = (c0 + TILE).min(n);
        for col in c0..c1 {
            // SAFETY: each (row, col) is written by exactly one task.
            let put = |row: usize, v: f32| unsafe { *(ptr as *mut f32).add(row * n + col) = v };
            for row in (0..m4).step_by(4) {
                let v = dot4(row, col);
                for (i, x) in v.into_iter().enumerate() {
                    put(row + i, x);
                }
            }
            for row in m4..m {
                put(row, dot(row, col));
            }
        }
    });
}
