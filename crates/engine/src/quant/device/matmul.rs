//! GGUF blocks on a CUDA device and their matmul (kernels/quant_matmul.cu): up to
//! [`QMV_LOOP_ROWS`] activation rows through the 8-bit dot-product kernel (launches of
//! [`QMV_MAX_ROWS`]), more rows through slices of the weight dequantized to the activation
//! type and cuBLAS (a prefill path until an int8 tensor-core kernel exists).

use candle_core::backend::BackendStorage;
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{Device, Tensor};
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::DeviceQuantType;
use crate::cuda::{
    by_float_type, contiguous_view, cuda_err, cuda_only_op, launch_config, launch_op, quant_module,
    KernelType, OpInput, OpLaunch, OpResult,
};
use crate::error::{EngineError, Result};

/// Activation rows one decode kernel launch takes.
pub const QMV_MAX_ROWS: usize = 8;

/// Rows up to which the decode kernel runs in launches of [`QMV_MAX_ROWS`] (each reads the
/// weight once); more rows dequantize the weight for cuBLAS's tensor cores.
pub const QMV_LOOP_ROWS: usize = 32;

/// Bytes of dequantized weight a matmul holds at once: the weight is dequantized and
/// multiplied in slices of its rows (an 8B output head would otherwise need 1 GB of bf16
/// inside a decode step, and inside a captured CUDA graph).
const DEQUANT_SLICE_BYTES: usize = 64 << 20;

/// A `[n, k]` weight in GGUF blocks of `ty` on the device.
pub struct CudaQuantWeight {
    pub ty: DeviceQuantType,
    data: CudaSlice<u8>,
    pub n: usize,
    pub k: usize,
}

impl CudaQuantWeight {
    /// Uploads GGUF bytes (row-major blocks) to `device`.
    pub fn upload(
        device: &Device,
        ty: DeviceQuantType,
        raw: &[u8],
        n: usize,
        k: usize,
    ) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(EngineError::Config(
                "CudaQuantWeight on a non-CUDA device".into(),
            ));
        };
        if k == 0 || !k.is_multiple_of(ty.block_values()) || raw.len() != ty.weight_bytes(n, k) {
            return Err(EngineError::Shape(format!(
                "{ty:?} weight [{n}, {k}]: {} bytes, or a width that is not a multiple of {}",
                raw.len(),
                ty.block_values()
            )));
        }
        let data = dev
            .cuda_stream()
            .clone_htod(raw)
            .map_err(EngineError::cuda)?;
        Ok(Self { ty, data, n, k })
    }

    pub fn size_bytes(&self) -> usize {
        self.ty.weight_bytes(self.n, self.k)
    }

    /// `x w^T` for `x` `[m, k]` (f32, f16 or bf16, on the weight's device).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            return Err(EngineError::Shape(format!(
                "matmul: input width {k}, weight width {}",
                self.k
            )));
        }
        if m == 0 {
            return Ok(Tensor::zeros((0, self.n), x.dtype(), x.device())?);
        }
        let x = x.contiguous()?;
        if m <= QMV_LOOP_ROWS {
            let parts = (0..m)
                .step_by(QMV_MAX_ROWS)
                .map(|r| {
                    let rows = x.narrow(0, r, QMV_MAX_ROWS.min(m - r))?;
                    Ok(rows.apply_op1_no_bwd(&QuantMatVec(self))?)
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Tensor::cat(&parts, 0)?);
        }
        let per_slice =
            (DEQUANT_SLICE_BYTES / (self.k * x.dtype().size_in_bytes())).max(64) / 64 * 64;
        let parts = (0..self.n)
            .step_by(per_slice)
            .map(|n0| {
                let w = self.dequantize(&x, n0..self.n.min(n0 + per_slice))?;
                Ok(x.matmul(&w.t()?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Rows `rows` of the weight as a dense `[rows, k]` tensor of `like`'s type (on its
    /// device).
    pub fn dequantize(&self, like: &Tensor, rows: std::ops::Range<usize>) -> Result<Tensor> {
        Ok(like.apply_op1_no_bwd(&Dequantize(self, rows))?)
    }
}

/// The decode matmul: `x` quantized to 8 bits, then one warp per output column.
struct QuantMatVec<'a>(&'a CudaQuantWeight);

impl QuantMatVec<'_> {
    fn run<T: KernelType + CudaDType>(&self, (s, l): OpInput) -> OpResult {
        let w = self.0;
        let (m, k) = l.shape().dims2()?;
        let x = contiguous_view::<T>(s, l)?;
        let name = format!("qmv_{}_m{m}_{}", w.ty.kernel_name(), T::SUFFIX);
        let mut launch = OpLaunch::<T>::new(s, quant_module, &name, m * w.n)?;
        let st = launch.stream.clone();
        let blocks = k / 32;
        // SAFETY: quantize_q8_1 writes every element of both before qmv reads them.
        let mut xq = unsafe { st.alloc::<i8>(m * k) }.map_err(cuda_err)?;
        let mut xds = unsafe { st.alloc::<f32>(2 * m * blocks) }.map_err(cuda_err)?;
        let qf = quant_module(&st)?
            .load_function(&format!("quantize_q8_1_{}", T::SUFFIX))
            .map_err(cuda_err)?;
        let k_i = k as i32;
        let mut qargs = st.launch_builder(&qf);
        qargs.arg(&x).arg(&mut xq).arg(&mut xds).arg(&k_i);
        // SAFETY: a warp per block of 32 values of each row, inside x, xq and xds.
        unsafe { qargs.launch(launch_config((blocks.div_ceil(8) as u32, m as u32, 1), 256)) }
            .map_err(cuda_err)?;
        let n_i = w.n as i32;
        let cfg = launch_config((w.n.div_ceil(4) as u32, 1, 1), 128);
        launch_op!(launch, cfg, &w.data, &xq, &xds, &mut launch.out, &n_i, &k_i)?;
        Ok(launch.finish((m, w.n)))
    }
}

cuda_only_op!(CustomOp1 for QuantMatVec<'_>, "quant_matvec", |op, s, l| {
    by_float_type!(s.dtype(), "quant_matvec", T => op.run::<T>((s, l)))
});

/// Rows of the weight dequantized to the input's type (the input only gives the type and
/// device).
struct Dequantize<'a>(&'a CudaQuantWeight, std::ops::Range<usize>);

impl Dequantize<'_> {
    fn run<T: KernelType + CudaDType>(&self, s: &CudaStorage) -> OpResult {
        let (w, rows) = (self.0, &self.1);
        if rows.start >= rows.end || rows.end > w.n {
            return Err(cuda_err("dequantize: rows outside the weight"));
        }
        let n = rows.len();
        let name = format!("dequantize_{}_{}", w.ty.kernel_name(), T::SUFFIX);
        let mut launch = OpLaunch::<T>::new(s, quant_module, &name, n * w.k)?;
        let row_bytes = w.ty.weight_bytes(1, w.k);
        let data = w.data.slice(rows.start * row_bytes..rows.end * row_bytes);
        let (n_i, k_i) = (n as i32, w.k as i32);
        let chunks = n * w.k / 32;
        let cfg = launch_config((chunks.div_ceil(128) as u32, 1, 1), 128);
        launch_op!(launch, cfg, &data, &mut launch.out, &n_i, &k_i)?;
        Ok(launch.finish((n, w.k)))
    }
}

cuda_only_op!(CustomOp1 for Dequantize<'_>, "quant_dequantize", |op, s, _l| {
    by_float_type!(s.dtype(), "quant_dequantize", T => op.run::<T>(s))
});
