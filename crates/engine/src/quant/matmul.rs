//! `y = x W^T` for GGUF-quantized `W` kept in its blocks.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::blocks::{
    cast_blocks, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK,
};
use super::groups::{group_columns, GroupQ4_0, GroupQ4_1, GroupQ5_0, GroupQ5_1, GroupQ8_0};
use super::kblocks::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
use super::{cpu_isa, quantize_row_q8, quantize_row_q8_k, CpuIsa};
use crate::error::{EngineError, Result};
use crate::ops::with_f32;

/// Weights in a layout our kernels read: the 32-value types' blocks in groups of four
/// columns (output features, `groups.rs`), the K-quants' blocks in GGUF's row order.
pub enum QuantWeights {
    Q4_0(Vec<GroupQ4_0>),
    Q4_1(Vec<GroupQ4_1>),
    Q5_0(Vec<GroupQ5_0>),
    Q5_1(Vec<GroupQ5_1>),
    Q8_0(Vec<GroupQ8_0>),
    Q4K(Vec<BlockQ4K>),
    Q5K(Vec<BlockQ5K>),
    Q6K(Vec<BlockQ6K>),
}

/// The activation quantization a weight type pairs with (ggml's `vec_dot_type`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ActKind {
    Q8_0,
    Q8_1,
    Q8K,
}

impl QuantWeights {
    /// From GGUF's row-major `[n, k]` bytes of `dtype`; `None` for a type (or a width) our
    /// kernels do not take.
    pub fn from_gguf(dtype: GgmlDType, raw: &[u8], n: usize, k: usize) -> Option<Self> {
        let grouped = k.is_multiple_of(QK);
        let whole_k = k.is_multiple_of(QK_K);
        let kb = k / QK;
        Some(match dtype {
            GgmlDType::Q4_0 if grouped => {
                Self::Q4_0(group_columns::<BlockQ4_0>(&cast_blocks(raw), n, kb))
            }
            GgmlDType::Q4_1 if grouped => {
                Self::Q4_1(group_columns::<BlockQ4_1>(&cast_blocks(raw), n, kb))
            }
            GgmlDType::Q5_0 if grouped => {
                Self::Q5_0(group_columns::<BlockQ5_0>(&cast_blocks(raw), n, kb))
            }
            GgmlDType::Q5_1 if grouped => {
                Self::Q5_1(group_columns::<BlockQ5_1>(&cast_blocks(raw), n, kb))
            }
            GgmlDType::Q8_0 if grouped => {
                Self::Q8_0(group_columns::<BlockQ8_0>(&cast_blocks(raw), n, kb))
            }
            GgmlDType::Q4K if whole_k => Self::Q4K(cast_blocks(raw)),
            GgmlDType::Q5K if whole_k => Self::Q5K(cast_blocks(raw)),
            GgmlDType::Q6K if whole_k => Self::Q6K(cast_blocks(raw)),
            _ => return None,
        })
    }

    /// From GGUF's row-major `[n, k / 32]` Q4_1 blocks.
    pub fn q4_1(blocks: Vec<BlockQ4_1>, n: usize, k: usize) -> Self {
        Self::Q4_1(group_columns(&blocks, n, k / QK))
    }

    /// From GGUF's row-major `[n, k / 32]` Q8_0 blocks.
    pub fn q8_0(blocks: Vec<BlockQ8_0>, n: usize, k: usize) -> Self {
        Self::Q8_0(group_columns(&blocks, n, k / QK))
    }

    fn act_kind(&self) -> ActKind {
        match self {
            Self::Q4_0(_) | Self::Q5_0(_) | Self::Q8_0(_) => ActKind::Q8_0,
            Self::Q4_1(_) | Self::Q5_1(_) => ActKind::Q8_1,
            Self::Q4K(_) | Self::Q5K(_) | Self::Q6K(_) => ActKind::Q8K,
        }
    }
}

/// A linear layer: our kernels for the types we have them for (CPU layouts, or GGUF blocks
/// on a CUDA device), candle's otherwise (Q2_K, Q3_K, the IQ types).
pub enum QuantLinear {
    Own {
        w: QuantWeights,
        n: usize,
        k: usize,
    },
    #[cfg(feature = "cuda")]
    Device(super::device::CudaQuantWeight),
    Candle(QMatMul),
}

impl QuantLinear {
    /// From raw GGUF bytes of a `[n, k]` weight.
    pub fn new(qt: QTensor, raw: &[u8], device: &Device) -> Result<Self> {
        let (n, k) = qt.shape().dims2()?;
        #[cfg(feature = "cuda")]
        if device.is_cuda() {
            use super::device::{CudaQuantWeight, DeviceQuantType};
            if let Some(ty) = DeviceQuantType::from_ggml(qt.dtype()) {
                if k.is_multiple_of(ty.block_values()) {
                    return Ok(Self::Device(CudaQuantWeight::upload(
                        device, ty, raw, n, k,
                    )?));
                }
            }
        }
        let own = match device.is_cpu() {
            true => QuantWeights::from_gguf(qt.dtype(), raw, n, k),
            false => None,
        };
        Ok(match own {
            Some(w) => Self::Own { w, n, k },
            None => Self::Candle(QMatMul::from_qtensor(qt)?),
        })
    }

    /// Whether this layer runs on candle's quantized matmul (not ours).
    pub fn is_candle(&self) -> bool {
        matches!(self, Self::Candle(_))
    }

    /// `x w^T` with the best instruction set the machine runs.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_on(x, cpu_isa())
    }

    /// `x w^T` with `isa` (where the machine runs it).
    pub fn forward_on(&self, x: &Tensor, isa: CpuIsa) -> Result<Tensor> {
        let mut ys = Self::forward_many(&[self], x, isa)?;
        Ok(ys.remove(0))
    }

    /// Several layers over the same input (Q/K/V, gate/up): the activation rows are
    /// quantized once for all of them. The same results as separate `forward` calls.
    pub fn forward_many(layers: &[&QuantLinear], x: &Tensor, isa: CpuIsa) -> Result<Vec<Tensor>> {
        // Our kernels' weights, or candle's matmuls one by one when any layer is candle's.
        let own: Option<Vec<(&QuantWeights, usize, usize)>> = layers
            .iter()
            .map(|l| match l {
                Self::Own { w, n, k } => Some((w, *n, *k)),
                _ => None,
            })
            .collect();
        let Some(own) = own else {
            return layers
                .iter()
                .map(|l| match l {
                    Self::Candle(m) => Ok(m.forward(x)?),
                    #[cfg(feature = "cuda")]
                    Self::Device(w) => w.forward(x),
                    ours => ours.forward_on(x, isa),
                })
                .collect();
        };
        let (m, kx) = x.dims2()?;
        if let Some((_, _, k)) = own.iter().find(|(_, _, k)| *k != kx) {
            return Err(EngineError::Shape(format!(
                "matmul: input width {kx}, weight width {k}"
            )));
        }
        let need = |kind: ActKind| own.iter().any(|(w, _, _)| w.act_kind() == kind);
        let outs = with_f32(x, |xd| {
            let rows = QuantizedRows::new(
                xd,
                m,
                kx,
                [need(ActKind::Q8_0), need(ActKind::Q8_1), need(ActKind::Q8K)],
            );
            let ws: Vec<(&QuantWeights, usize)> = own.iter().map(|(w, n, _)| (*w, *n)).collect();
            rows.matmul_many(&ws, isa)
        })?;
        own.iter()
            .zip(outs)
            .map(|((_, n, _), out)| Ok(Tensor::from_vec(out, (m, *n), x.device())?))
            .collect()
    }
}

/// Activation rows quantized the ways the layers' weight types pair with.
struct QuantizedRows {
    m: usize,
    q8_0: Vec<BlockQ8_0>,
    q8_1: Vec<BlockQ8_1>,
    q8_k: Vec<BlockQ8K>,
}

/// Each of the rows of `x` (`k` wide) quantized into `k / bk` blocks by `q` (none if not
/// `wanted`).
fn quantize_rows<B: Default + Clone>(
    x: &[f32],
    k: usize,
    bk: usize,
    wanted: bool,
    q: fn(&[f32], &mut [B]),
) -> Vec<B> {
    if !wanted {
        return Vec::new();
    }
    let mut out = vec![B::default(); x.len() / k * (k / bk)];
    for (row, blocks) in x.chunks_exact(k).zip(out.chunks_exact_mut(k / bk)) {
        q(row, blocks);
    }
    out
}

impl QuantizedRows {
    /// `wanted`: Q8_0, Q8_1, Q8_K.
    fn new(x: &[f32], m: usize, k: usize, wanted: [bool; 3]) -> Self {
        let x = &x[..m * k];
        Self {
            m,
            q8_0: quantize_rows(x, k, QK, wanted[0], quantize_row_q8::<BlockQ8_0>),
            q8_1: quantize_rows(x, k, QK, wanted[1], quantize_row_q8::<BlockQ8_1>),
            q8_k: quantize_rows(x, k, QK_K, wanted[2], quantize_row_q8_k),
        }
    }

    /// `[m, n]` outputs of each weight, all computed in one parallel loop.
    #[cfg(x86_v3)]
    fn matmul_many(&self, ws: &[(&QuantWeights, usize)], isa: CpuIsa) -> Vec<Vec<f32>> {
        use super::gemm::{prepare, run_many, ColumnTasks};
        let m = self.m;
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; m * n]).collect();
        if m == 0 {
            return outs;
        }
        let jobs: Vec<Box<dyn ColumnTasks + '_>> = ws
            .iter()
            .zip(outs.iter_mut())
            .filter(|((_, n), _)| *n > 0)
            .map(|((w, n), o)| -> Box<dyn ColumnTasks + '_> {
                let n = *n;
                match w {
                    QuantWeights::Q4_0(wb) => {
                        Box::new(prepare::<BlockQ4_0>(isa, wb, &self.q8_0, m, n, o))
                    }
                    QuantWeights::Q4_1(wb) => {
                        Box::new(prepare::<BlockQ4_1>(isa, wb, &self.q8_1, m, n, o))
                    }
                    QuantWeights::Q5_0(wb) => {
                        Box::new(prepare::<BlockQ5_0>(isa, wb, &self.q8_0, m, n, o))
                    }
                    QuantWeights::Q5_1(wb) => {
                        Box::new(prepare::<BlockQ5_1>(isa, wb, &self.q8_1, m, n, o))
                    }
                    QuantWeights::Q8_0(wb) => {
                        Box::new(prepare::<BlockQ8_0>(isa, wb, &self.q8_0, m, n, o))
                    }
                    QuantWeights::Q4K(wb) => {
                        Box::new(prepare::<BlockQ4K>(isa, wb, &self.q8_k, m, n, o))
                    }
                    QuantWeights::Q5K(wb) => {
                        Box::new(prepare::<BlockQ5K>(isa, wb, &self.q8_k, m, n, o))
                    }
                    QuantWeights::Q6K(wb) => {
                        Box::new(prepare::<BlockQ6K>(isa, wb, &self.q8_k, m, n, o))
                    }
                }
            })
            .collect();
        let refs: Vec<&dyn ColumnTasks> = jobs.iter().map(|j| j.as_ref()).collect();
        run_many(&refs);
        drop(jobs);
        outs
    }

    /// `[m, n]` outputs of each weight, one after another.
    #[cfg(not(x86_v3))]
    fn matmul_many(&self, ws: &[(&QuantWeights, usize)], isa: CpuIsa) -> Vec<Vec<f32>> {
        ws.iter().map(|(w, n)| self.matmul(w, *n, isa)).collect()
    }

    /// `[m, n]` outputs of one weight.
    #[cfg(not(x86_v3))]
    fn matmul(&self, w: &QuantWeights, n: usize, isa: CpuIsa) -> Vec<f32> {
        let mut out = vec![0f32; self.m * n];
        let (m, o) = (self.m, &mut out);
        match w {
            QuantWeights::Q4_0(wb) => gemm::<BlockQ4_0>(isa, wb, &self.q8_0, m, n, o),
            QuantWeights::Q4_1(wb) => gemm::<BlockQ4_1>(isa, wb, &self.q8_1, m, n, o),
            QuantWeights::Q5_0(wb) => gemm::<BlockQ5_0>(isa, wb, &self.q8_0, m, n, o),
            QuantWeights::Q5_1(wb) => gemm::<BlockQ5_1>(isa, wb, &self.q8_1, m, n, o),
            QuantWeights::Q8_0(wb) => gemm::<BlockQ8_0>(isa, wb, &self.q8_0, m, n, o),
            QuantWeights::Q4K(wb) => gemm::<BlockQ4K>(isa, wb, &self.q8_k, m, n, o),
            QuantWeights::Q5K(wb) => gemm::<BlockQ5K>(isa, wb, &self.q8_k, m, n, o),
            QuantWeights::Q6K(wb) => gemm::<BlockQ6K>(isa, wb, &self.q8_k, m, n, o),
        }
        out
    }
}

#[cfg(not(x86_v3))]
use portable_gemm::gemm;

/// Without AVX2: one portable dot product per output element, parallel over columns.
#[cfg(not(x86_v3))]
mod portable_gemm {
    use rayon::prelude::*;

    use crate::quant::blocks::*;
    use crate::quant::dots::*;
    use crate::quant::groups::{column_blocks, Grouped};
    use crate::quant::kblocks::*;
    use crate::quant::CpuIsa;

    /// A weight type's portable dot product with its activation blocks, and one column's
    /// blocks out of its stored form.
    pub trait PortableDot: Sized + Sync {
        type Act: Sync;
        type Stored: Sync;
        fn dot(w: &[Self], x: &[Self::Act]) -> f32;
        fn column(w: &[Self::Stored], kb: usize, c: usize) -> Vec<Self>;
    }

    macro_rules! portable {
        ($W:ty, $X:ty, $dot:ident, grouped) => {
            portable!($W, $X, $dot, <$W as Grouped>::Group, |w, kb, c| {
                column_blocks::<$W>(w, kb, c)
            });
        };
        ($W:ty, $X:ty, $dot:ident, rows) => {
            portable!($W, $X, $dot, $W, |w: &[$W], kb, c| w[c * kb..(c + 1) * kb]
                .to_vec());
        };
        ($W:ty, $X:ty, $dot:ident, $S:ty, $column:expr) => {
            impl PortableDot for $W {
                type Act = $X;
                type Stored = $S;
                fn dot(w: &[Self], x: &[$X]) -> f32 {
                    $dot(w, x)
                }
                fn column(w: &[$S], kb: usize, c: usize) -> Vec<Self> {
                    ($column)(w, kb, c)
                }
            }
        };
    }
    portable!(BlockQ4_0, BlockQ8_0, dot_q4_0_q8_0, grouped);
    portable!(BlockQ4_1, BlockQ8_1, dot_q4_1_q8_1, grouped);
    portable!(BlockQ5_0, BlockQ8_0, dot_q5_0_q8_0, grouped);
    portable!(BlockQ5_1, BlockQ8_1, dot_q5_1_q8_1, grouped);
    portable!(BlockQ8_0, BlockQ8_0, dot_q8_0_q8_0, grouped);
    portable!(BlockQ4K, BlockQ8K, dot_q4_k_q8_k, rows);
    portable!(BlockQ5K, BlockQ8K, dot_q5_k_q8_k, rows);
    portable!(BlockQ6K, BlockQ8K, dot_q6_k_q8_k, rows);

    /// (`_isa`: this build has one instruction set.)
    pub fn gemm<W: PortableDot>(
        _isa: CpuIsa,
        w: &[W::Stored],
        x: &[W::Act],
        m: usize,
        n: usize,
        out: &mut [f32],
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let kb = x.len() / m;
        let mut t = vec![0f32; n * m];
        t.par_chunks_mut(m).enumerate().for_each(|(c, col)| {
            let wc = W::column(w, kb, c);
            for (r, o) in col.iter_mut().enumerate() {
                *o = W::dot(&wc, &x[r * kb..(r + 1) * kb]);
            }
        });
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = t[c * m + r];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type a GGUF users serve carries (the K-quant mixes included) gets our kernels on
    /// the CPU, at a width that is a multiple of 256 and (for the 32-value types) one that is
    /// not; candle's quantized matmul is left only for types we have no kernel for.
    #[test]
    fn cpu_linear_layers_use_our_kernels_for_every_served_type() {
        let mut seed = 5;
        let (n, k) = (8, 512);
        let w = Tensor::from_vec(
            crate::quant::tests::rand_f32(n * k, &mut seed),
            (n, k),
            &Device::Cpu,
        )
        .unwrap();
        let ours = [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ];
        let x = Tensor::from_vec(
            crate::quant::tests::rand_f32(3 * k, &mut seed),
            (3, k),
            &Device::Cpu,
        )
        .unwrap();
        for ty in ours {
            let qt = QTensor::quantize(&w, ty).unwrap();
            let raw = qt.data().unwrap().to_vec();
            let reference = QMatMul::from_qtensor(QTensor::quantize(&w, ty).unwrap()).unwrap();
            let l = QuantLinear::new(qt, &raw, &Device::Cpu).unwrap();
            assert!(!l.is_candle(), "{ty:?}");
            // The same weights through candle's matmul: close (candle quantizes activations
            // its own way), so the blocks were read as what they are.
            let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let a = values(l.forward(&x).unwrap());
            let b = values(reference.forward(&x).unwrap());
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 0.02 * scale, "{ty:?}: {p} vs candle {q}");
            }
        }
        // Widths that are not a multiple of 256 (576, the default model's hidden size) keep
        // the 32-value types on our kernels.
        let w = Tensor::zeros((4, 576), candle_core::DType::F32, &Device::Cpu).unwrap();
        for ty in [GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let qt = QTensor::quantize(&w, ty).unwrap();
            let raw = qt.data().unwrap().to_vec();
            assert!(
                !QuantLinear::new(qt, &raw, &Device::Cpu)
                    .unwrap()
                    .is_candle(),
                "{ty:?}"
            );
        }
        // Q2_K and Q3_K have no kernel of ours yet: candle's, named as such.
        let qt = QTensor::quantize(
            &Tensor::zeros((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::Q3K,
        )
        .unwrap();
        let raw = qt.data().unwrap().to_vec();
        assert!(QuantLinear::new(qt, &raw, &Device::Cpu)
            .unwrap()
            .is_candle());
    }
}
