//! Linear layers as the model holds them: GGUF blocks kept quantized or dense matrices,
//! optional biases, and the Q/K/V and gate/up projections split or stacked by rows.

use candle_core::Tensor;

use super::switches::Kernels;
use crate::error::{EngineError, Result};
use crate::quant::QuantLinear;

/// A linear layer's weight: GGUF blocks kept quantized (our CPU kernels or candle's CUDA
/// quantized matmul), or a dense `[out, in]` matrix (cuBLAS on CUDA).
pub(super) enum Weight {
    Quant(QuantLinear),
    Dense(Tensor),
}

/// A linear layer with an optional bias.
pub(super) struct Linear {
    pub(super) weight: Weight,
    pub(super) bias: Option<Tensor>,
}

impl Linear {
    pub(super) fn forward(&self, x: &Tensor, k: Kernels) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Quant(q) => q.forward_on(x, k.isa)?,
            Weight::Dense(w) => dense_matmul(x, w, k.gemv)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Linear layers over one input: quantized weights share one quantization of it (the same
/// results as separate `forward` calls).
pub(super) fn forward_many<const N: usize>(
    parts: [&Linear; N],
    x: &Tensor,
    k: Kernels,
) -> Result<[Tensor; N]> {
    let quant: Vec<&QuantLinear> = parts
        .iter()
        .filter_map(|p| match &p.weight {
            Weight::Quant(q) => Some(q),
            Weight::Dense(_) => None,
        })
        .collect();
    let ys: Vec<Tensor> = if quant.len() == N {
        let ys = QuantLinear::forward_many(&quant, x, k.isa)?;
        ys.into_iter()
            .zip(parts)
            .map(|(y, p)| match &p.bias {
                Some(b) => Ok(y.broadcast_add(b)?),
                None => Ok(y),
            })
            .collect::<Result<_>>()?
    } else {
        parts
            .iter()
            .map(|p| p.forward(x, k))
            .collect::<Result<_>>()?
    };
    ys.try_into()
        .map_err(|_| EngineError::Shape("forward_many: wrong output count".into()))
}

/// The Q, K and V projections: three matmuls, or one over their weights stacked by rows
/// (dense weights; see [`LlamaModel::stack_projections`]).
pub(super) enum QkvProj {
    Split(Linear, Linear, Linear),
    Stacked(Linear),
}

/// The MLP's gate and up projections, split or stacked (gate rows, then up rows).
pub(super) enum GateUpProj {
    Split(Linear, Linear),
    Stacked(Linear),
}

/// Dense weights (and biases, all or none) stacked by rows into one linear layer; `None`
/// when any part is quantized or the biases are mixed.
pub(super) fn stack_linears(parts: &[&Linear]) -> Result<Option<Linear>> {
    let mut ws = Vec::with_capacity(parts.len());
    for p in parts {
        match &p.weight {
            Weight::Dense(w) => ws.push(w.clone()),
            Weight::Quant(_) => return Ok(None),
        }
    }
    let biases: Vec<Tensor> = parts.iter().filter_map(|p| p.bias.clone()).collect();
    let bias = match biases.len() {
        0 => None,
        n if n == parts.len() => Some(Tensor::cat(&biases, 0)?),
        _ => return Ok(None),
    };
    Ok(Some(Linear {
        weight: Weight::Dense(Tensor::cat(&ws, 0)?),
        bias,
    }))
}

/// `x w^T`: the skinny matmul kernel for decode batches on CUDA (unless `gemv` is off),
/// cuBLAS otherwise.
pub(super) fn dense_matmul(x: &Tensor, w: &Tensor, gemv: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if gemv {
        if let Some(y) = crate::ops::gemv(x, w)? {
            return Ok(y);
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = gemv;
    Ok(x.matmul(&w.t()?)?)
}

pub(super) struct Layer {
    pub(super) attn_norm: Tensor,
    pub(super) qkv: QkvProj,
    /// Per-head RMSNorm weights of Q and K, applied before RoPE (Qwen3).
    pub(super) q_norm: Option<Tensor>,
    pub(super) k_norm: Option<Tensor>,
    pub(super) wo: Linear,
    pub(super) ffn_norm: Tensor,
    pub(super) gate_up: GateUpProj,
    pub(super) w_down: Linear,
    /// Gemma 3's norms of the attention's and the MLP's outputs, before each residual add.
    pub(super) post_attn_norm: Option<Tensor>,
    pub(super) post_ffn_norm: Option<Tensor>,
}
