//! SiLU-and-mul (the SwiGLU MLP's activation): llama.cpp's `ggml_vec_swiglu_f32` on the
//! CPU, one fused kernel on CUDA (kernels/fused.cu), over split or stacked gate/up outputs.

use candle_core::{DType, Tensor};

use super::with_f32;
use crate::error::{EngineError, Result};

/// silu(gate) * up: one fused kernel on CUDA (when `fused`; off: FERROLM_NO_FUSED).
pub fn silu_mul(g: &Tensor, u: &Tensor, fused: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if g.device().is_cuda() && fused {
        return cuda::silu_mul(g, u);
    }
    let _ = fused;
    if g.device().is_cpu() && g.dtype() == DType::F32 && u.dtype() == DType::F32 {
        return silu_mul_cpu(g, u);
    }
    Ok((g.silu()? * u)?)
}

/// `silu(g) * u` in one parallel pass, row by row as llama.cpp's `ggml_vec_swiglu_f32`
/// computes it ([`super::ggml_arith::swiglu_row`]).
pub(crate) fn silu_mul_cpu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    if g.dims() != u.dims() {
        return Err(EngineError::Shape("silu_mul: shapes differ".into()));
    }
    let width = g.dims().last().copied().unwrap_or(1).max(1);
    // Whole rows per task (llama.cpp's vector steps restart at each row).
    let rows_per_task = (8192 / width).max(1);
    let out = with_f32(g, |gd| {
        with_f32(u, |ud| {
            let mut out = vec![0f32; gd.len()];
            let chunk = rows_per_task * width;
            out.par_chunks_mut(chunk)
                .zip(gd.par_chunks(chunk).zip(ud.par_chunks(chunk)))
                .for_each(|(o, (g, u))| {
                    for ((o, g), u) in o
                        .chunks_mut(width)
                        .zip(g.chunks(width))
                        .zip(u.chunks(width))
                    {
                        super::ggml_arith::swiglu_row(g, u, o);
                    }
                });
            out
        })
    })??;
    Ok(Tensor::from_vec(out, g.dims(), g.device())?)
}

/// silu(gate) * up over a stacked gate/up output `[rows, 2 ff]`.
pub fn silu_mul_packed(gu: &Tensor, fused: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if gu.device().is_cuda() && fused {
        return cuda::silu_mul_packed(gu);
    }
    let ff = gu.dims2()?.1 / 2;
    silu_mul(
        &gu.narrow(1, 0, ff)?.contiguous()?,
        &gu.narrow(1, ff, ff)?.contiguous()?,
        fused,
    )
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::CudaDType;
    use candle_core::Tensor;
    use cudarc::driver::PushKernelArg;

    use crate::cuda::{
        by_float_type, contiguous_view, cuda_err, cuda_only_op, fused_module, launch_config,
        launch_op, KernelType, OpInput, OpLaunch, OpResult,
    };
    use crate::error::Result;

    struct SiluMul;

    impl SiluMul {
        fn run<T: KernelType + CudaDType>((s1, l1): OpInput, (s2, l2): OpInput) -> OpResult {
            let n = l1.shape().elem_count();
            let (g, u) = (contiguous_view::<T>(s1, l1)?, contiguous_view::<T>(s2, l2)?);
            let mut launch =
                OpLaunch::<T>::new(s1, fused_module, &format!("silu_mul_{}", T::SUFFIX), n)?;
            let n64 = n as i64;
            let blocks = n.div_ceil(256).min(65535 * 8) as u32;
            let cfg = launch_config((blocks.max(1), 1, 1), 256);
            launch_op!(launch, cfg, &g, &u, &mut launch.out, &n64)?;
            Ok(launch.finish(l1.shape().clone()))
        }
    }

    cuda_only_op!(CustomOp2 for SiluMul, "silu_mul", |_op, s1, l1, s2, l2| {
        if l1.shape() != l2.shape() {
            return Err(cuda_err("silu_mul: gate and up differ in shape"));
        }
        by_float_type!(s1.dtype(), "silu_mul", T => SiluMul::run::<T>((s1, l1), (s2, l2)))
    });

    /// `silu(gate) * up` in one kernel.
    pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        Ok(gate
            .contiguous()?
            .apply_op2_no_bwd(&up.contiguous()?, &SiluMul)?)
    }

    struct SiluMulPacked;

    impl SiluMulPacked {
        fn run<T: KernelType + CudaDType>((s1, l1): OpInput) -> OpResult {
            let (rows, w) = l1.shape().dims2()?;
            if w % 2 != 0 {
                return Err(cuda_err("silu_mul_packed: odd width"));
            }
            let ff = w / 2;
            let gu = contiguous_view::<T>(s1, l1)?;
            let name = format!("silu_mul_packed_{}", T::SUFFIX);
            let mut launch = OpLaunch::<T>::new(s1, fused_module, &name, rows * ff)?;
            let (rows_i, ff_i) = (rows as i64, ff as i64);
            let blocks = (rows * ff).div_ceil(256).min(65535 * 8) as u32;
            let cfg = launch_config((blocks.max(1), 1, 1), 256);
            launch_op!(launch, cfg, &gu, &mut launch.out, &rows_i, &ff_i)?;
            Ok(launch.finish((rows, ff)))
        }
    }

    cuda_only_op!(CustomOp1 for SiluMulPacked, "silu_mul_packed", |_op, s1, l1| {
        by_float_type!(s1.dtype(), "silu_mul_packed", T => SiluMulPacked::run::<T>((s1, l1)))
    });

    /// `[rows, 2 ff]` (gate, then up) to `silu(gate) * up` `[rows, ff]` in one kernel.
    pub fn silu_mul_packed(gate_up: &Tensor) -> Result<Tensor> {
        Ok(gate_up.contiguous()?.apply_op1_no_bwd(&SiluMulPacked)?)
    }
}
