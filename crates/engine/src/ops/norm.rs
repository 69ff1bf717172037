//! RMSNorm, and residual add + RMSNorm: llama.cpp's arithmetic on the CPU, candle-nn's
//! kernel or our fused CUDA kernel (kernels/fused.cu) on a GPU.

use candle_core::{DType, Tensor};

use super::with_f32;
use crate::error::Result;

/// RMSNorm one row at a time (so batch-invariant): llama.cpp's arithmetic on the CPU
/// ([`super::ggml_arith::rms_norm_row`]), candle-nn's fused kernel elsewhere.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        return rms_norm_cpu(x, w, eps);
    }
    Ok(candle_nn::ops::rms_norm(x, w, eps)?)
}

fn rms_norm_cpu(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    use rayon::prelude::*;
    let dim = w.dims1()?;
    let out = with_f32(x, |xd| {
        with_f32(w, |wd| {
            let mut out = vec![0f32; xd.len()];
            out.par_chunks_mut(dim)
                .zip(xd.par_chunks(dim))
                .for_each(|(o, x)| super::ggml_arith::rms_norm_row(x, wd, eps, o));
            out
        })
    })??;
    Ok(Tensor::from_vec(out, x.dims(), x.device())?)
}

/// `(residual + delta, rms_norm(residual + delta) * w)`, the normed half in `delta`'s type:
/// one fused kernel on CUDA (when `fused`). `residual` may be f32 under a half-precision `delta` (the
/// stream of sums then loses nothing to rounding between layers).
pub fn add_rms_norm(
    delta: &Tensor,
    residual: &Tensor,
    w: &Tensor,
    eps: f32,
    fused: bool,
) -> Result<(Tensor, Tensor)> {
    let dt = delta.dtype();
    #[cfg(feature = "cuda")]
    if delta.device().is_cuda() && fused {
        let (x, h) = cuda::add_rms_norm(delta, residual, w, eps)?;
        return Ok((x, h.to_dtype(dt)?));
    }
    let _ = fused;
    let x = (residual + delta.to_dtype(residual.dtype())?)?;
    let h = rms_norm(&x, &w.to_dtype(x.dtype())?, eps)?.to_dtype(dt)?;
    Ok((x, h))
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::CudaDType;
    use candle_core::{DType, Storage, Tensor};
    use cudarc::driver::PushKernelArg;

    use crate::cuda::{
        contiguous_view, cuda_err, cuda_only_op, fused_module, launch_config, launch_op,
        KernelType, OpInput, OpLaunch, OpResult,
    };
    use crate::error::{EngineError, Result};

    /// Residual add + RMSNorm; the residual (and both outputs) in `R`: the delta's type, or f32
    /// under a half-precision delta (`add_rms_norm_f32res_*`).
    struct AddRmsNorm<'w> {
        weight: &'w Tensor,
        eps: f32,
    }

    impl AddRmsNorm<'_> {
        fn run<T: KernelType + CudaDType, R: KernelType + CudaDType>(
            &self,
            (s1, l1): OpInput,
            (s2, l2): OpInput,
        ) -> OpResult {
            let (rows, h) = l1.shape().dims2()?;
            let (x, r) = (contiguous_view::<T>(s1, l1)?, contiguous_view::<R>(s2, l2)?);
            let (ws, wl) = self.weight.storage_and_layout();
            let Storage::Cuda(ws) = &*ws else {
                return Err(cuda_err("add_rms_norm: the weight is not on the GPU"));
            };
            let w = contiguous_view::<T>(ws, wl)?;
            let name = if T::DTYPE == R::DTYPE {
                format!("add_rms_norm_{}", T::SUFFIX)
            } else {
                format!("add_rms_norm_f32res_{}", T::SUFFIX)
            };
            let mut launch = OpLaunch::<R>::new(s1, fused_module, &name, 2 * rows * h)?;
            let (rows_i, h_i) = (rows as i32, h as i32);
            let cfg = launch_config((rows as u32, 1, 1), h.next_multiple_of(32).min(1024) as u32);
            launch_op!(
                launch,
                cfg,
                &x,
                &r,
                &w,
                &mut launch.out,
                &rows_i,
                &h_i,
                &self.eps
            )?;
            Ok(launch.finish((2, rows, h)))
        }
    }

    cuda_only_op!(CustomOp2 for AddRmsNorm<'_>, "add_rms_norm", |op, s1, l1, s2, l2| {
        if l1.shape() != l2.shape() || op.weight.dtype() != s1.dtype() {
            return Err(cuda_err("add_rms_norm: shapes or types differ"));
        }
        use half::{bf16, f16};
        match (s1.dtype(), s2.dtype()) {
            (DType::F32, DType::F32) => op.run::<f32, f32>((s1, l1), (s2, l2)),
            (DType::F16, DType::F16) => op.run::<f16, f16>((s1, l1), (s2, l2)),
            (DType::BF16, DType::BF16) => op.run::<bf16, bf16>((s1, l1), (s2, l2)),
            (DType::F16, DType::F32) => op.run::<f16, f32>((s1, l1), (s2, l2)),
            (DType::BF16, DType::F32) => op.run::<bf16, f32>((s1, l1), (s2, l2)),
            (a, b) => Err(cuda_err(format!(
                "add_rms_norm: {a:?} delta, {b:?} residual"
            ))),
        }
    });

    /// `(delta + residual, rms_norm(delta + residual) * weight)` in one kernel; `delta`,
    /// `residual`: `[rows, hidden]`. The results have the residual's type, which is the
    /// delta's or f32.
    pub fn add_rms_norm(
        delta: &Tensor,
        residual: &Tensor,
        weight: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor)> {
        if delta.rank() != 2 {
            return Err(EngineError::Shape(
                "add_rms_norm takes [rows, hidden]".into(),
            ));
        }
        let both = delta
            .contiguous()?
            .apply_op2_no_bwd(&residual.contiguous()?, &AddRmsNorm { weight, eps })?;
        Ok((both.get(0)?, both.get(1)?))
    }
}
