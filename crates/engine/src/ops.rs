//! Fused CUDA ops of the Llama block (kernels/fused.cu) as candle custom ops:
//! `silu_mul` (SiLU-and-mul) and `add_rms_norm` (residual add + RMSNorm in one pass).
//! Set FERROLM_NO_FUSED=1 to run candle's separate ops instead (a fallback and an A/B).

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{CustomOp2, DType, Layout, Shape, Storage, Tensor};
use cudarc::driver::{CudaModule, CudaStream, CudaView, LaunchConfig, PushKernelArg};

use crate::attention::cuda::{KernelType, FUSED_FATBIN};
use crate::error::{EngineError, Result};

pub fn fused_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FERROLM_NO_FUSED").is_none())
}

/// candle's error for anything the CUDA driver says.
pub(crate) fn cuda_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Cuda(e.to_string().into())
}

fn fused_module(stream: &Arc<CudaStream>) -> candle_core::Result<Arc<CudaModule>> {
    static MODULE: Mutex<Option<Arc<CudaModule>>> = Mutex::new(None);
    let mut m = MODULE.lock().map_err(cuda_err)?;
    if let Some(m) = m.as_ref() {
        return Ok(m.clone());
    }
    let loaded = stream
        .context()
        .load_module(cudarc::nvrtc::Ptx::from_binary(FUSED_FATBIN.to_vec()))
        .map_err(cuda_err)?;
    *m = Some(loaded.clone());
    Ok(loaded)
}

/// The contiguous elements of a CUDA tensor's storage as laid out by `layout`.
pub(crate) fn contiguous_view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    layout: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| cuda_err("fused op: input is not contiguous"))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

struct SiluMul;

impl SiluMul {
    fn run<T: KernelType + CudaDType>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = l1.shape().elem_count();
        let (g, u) = (contiguous_view::<T>(s1, l1)?, contiguous_view::<T>(s2, l2)?);
        let stream = s1.device.cuda_stream();
        let f = fused_module(&stream)?
            .load_function(&format!("silu_mul_{}", T::SUFFIX))
            .map_err(cuda_err)?;
        // SAFETY: every element is written by the kernel before it is read.
        let mut out = unsafe { stream.alloc::<T>(n) }.map_err(cuda_err)?;
        let n64 = n as i64;
        let blocks = n.div_ceil(256).min(65535 * 8) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks.max(1), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            stream
                .launch_builder(&f)
                .arg(&g)
                .arg(&u)
                .arg(&mut out)
                .arg(&n64)
                .launch(cfg)
                .map_err(cuda_err)?
        };
        Ok((
            CudaStorage::wrap_cuda_slice(out, s1.device.clone()),
            l1.shape().clone(),
        ))
    }
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu_mul"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(cuda_err("silu_mul runs on CUDA only"))
    }
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        if l1.shape() != l2.shape() {
            return Err(cuda_err("silu_mul: gate and up differ in shape"));
        }
        match s1.dtype() {
            DType::F32 => Self::run::<f32>(s1, l1, s2, l2),
            DType::F16 => Self::run::<half::f16>(s1, l1, s2, l2),
            DType::BF16 => Self::run::<half::bf16>(s1, l1, s2, l2),
            other => Err(cuda_err(format!("silu_mul: {other:?}"))),
        }
    }
}

/// `silu(gate) * up` in one kernel.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate
        .contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &SiluMul)?)
}

/// Residual add + RMSNorm; the residual (and both outputs) in `R`: the delta's type, or f32
/// under a half-precision delta (`add_rms_norm_f32res_*`).
struct AddRmsNorm<'w> {
    weight: &'w Tensor,
    eps: f32,
}

impl AddRmsNorm<'_> {
    fn run<T: KernelType + CudaDType, R: KernelType + CudaDType>(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, h) = l1.shape().dims2()?;
        let (x, r) = (contiguous_view::<T>(s1, l1)?, contiguous_view::<R>(s2, l2)?);
        let (ws, wl) = self.weight.storage_and_layout();
        let Storage::Cuda(ws) = &*ws else {
            return Err(cuda_err("add_rms_norm: the weight is not on the GPU"));
        };
        let w = contiguous_view::<T>(ws, wl)?;
        let stream = s1.device.cuda_stream();
        let name = if T::DTYPE == R::DTYPE {
            format!("add_rms_norm_{}", T::SUFFIX)
        } else {
            format!("add_rms_norm_f32res_{}", T::SUFFIX)
        };
        let f = fused_module(&stream)?
            .load_function(&name)
            .map_err(cuda_err)?;
        // SAFETY: both halves are written by the kernel before they are read.
        let mut out = unsafe { stream.alloc::<R>(2 * rows * h) }.map_err(cuda_err)?;
        let (rows_i, h_i) = (rows as i32, h as i32);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (h.next_multiple_of(32).min(1024) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            stream
                .launch_builder(&f)
                .arg(&x)
                .arg(&r)
                .arg(&w)
                .arg(&mut out)
                .arg(&rows_i)
                .arg(&h_i)
                .arg(&self.eps)
                .launch(cfg)
                .map_err(cuda_err)?
        };
        Ok((
            CudaStorage::wrap_cuda_slice(out, s1.device.clone()),
            Shape::from((2, rows, h)),
        ))
    }
}

impl CustomOp2 for AddRmsNorm<'_> {
    fn name(&self) -> &'static str {
        "add_rms_norm"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(cuda_err("add_rms_norm runs on CUDA only"))
    }
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        if l1.shape() != l2.shape() || self.weight.dtype() != s1.dtype() {
            return Err(cuda_err("add_rms_norm: shapes or types differ"));
        }
        use half::{bf16, f16};
        match (s1.dtype(), s2.dtype()) {
            (DType::F32, DType::F32) => self.run::<f32, f32>(s1, l1, s2, l2),
            (DType::F16, DType::F16) => self.run::<f16, f16>(s1, l1, s2, l2),
            (DType::BF16, DType::BF16) => self.run::<bf16, bf16>(s1, l1, s2, l2),
            (DType::F16, DType::F32) => self.run::<f16, f32>(s1, l1, s2, l2),
            (DType::BF16, DType::F32) => self.run::<bf16, f32>(s1, l1, s2, l2),
            (a, b) => Err(cuda_err(format!(
                "add_rms_norm: {a:?} delta, {b:?} residual"
            ))),
        }
    }
}

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
        return Err(EngineError::Config(
            "add_rms_norm takes [rows, hidden]".into(),
        ));
    }
    let both = delta
        .contiguous()?
        .apply_op2_no_bwd(&residual.contiguous()?, &AddRmsNorm { weight, eps })?;
    Ok((both.get(0)?, both.get(1)?))
}
