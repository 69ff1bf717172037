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

/// A stacked QKV projection's output split into rotated q, rotated k and v (kernel
/// `rope_split_qkv`): one kernel where the split path runs two rope kernels and copies.
struct RopeSplitQkv {
    nh: usize,
    nkv: usize,
    hd: usize,
    neox: bool,
}

impl RopeSplitQkv {
    fn run<T: KernelType + CudaDType>(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, width) = l1.shape().dims2()?;
        let (nh, nkv, hd) = (self.nh, self.nkv, self.hd);
        if width != (nh + 2 * nkv) * hd
            || l2.shape().elem_count() != n * hd / 2
            || l3.shape().elem_count() != n * hd / 2
            || hd % 2 != 0
        {
            return Err(cuda_err("rope_split_qkv: shapes do not match"));
        }
        let qkv = contiguous_view::<T>(s1, l1)?;
        let (cos, sin) = (contiguous_view::<T>(s2, l2)?, contiguous_view::<T>(s3, l3)?);
        let stream = s1.device.cuda_stream();
        let f = fused_module(&stream)?
            .load_function(&format!("rope_split_qkv_{}", T::SUFFIX))
            .map_err(cuda_err)?;
        // SAFETY: the kernel writes every element of q, k and v.
        let mut out = unsafe { stream.alloc::<T>(n * width) }.map_err(cuda_err)?;
        let (n_i, nh_i, nkv_i, hd_i, neox) =
            (n as i32, nh as i32, nkv as i32, hd as i32, self.neox as i32);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, (nh + 2 * nkv) as u32, 1),
            block_dim: ((hd / 2).next_multiple_of(32).min(128) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            stream
                .launch_builder(&f)
                .arg(&qkv)
                .arg(&cos)
                .arg(&sin)
                .arg(&mut out)
                .arg(&n_i)
                .arg(&nh_i)
                .arg(&nkv_i)
                .arg(&hd_i)
                .arg(&neox)
                .launch(cfg)
                .map_err(cuda_err)?
        };
        Ok((
            CudaStorage::wrap_cuda_slice(out, s1.device.clone()),
            Shape::from(n * width),
        ))
    }
}

impl candle_core::CustomOp3 for RopeSplitQkv {
    fn name(&self) -> &'static str {
        "rope_split_qkv"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(cuda_err("rope_split_qkv runs on CUDA only"))
    }
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        if s2.dtype() != s1.dtype() || s3.dtype() != s1.dtype() {
            return Err(cuda_err("rope_split_qkv: cos/sin differ in type from qkv"));
        }
        match s1.dtype() {
            DType::F32 => self.run::<f32>(s1, l1, s2, l2, s3, l3),
            DType::F16 => self.run::<half::f16>(s1, l1, s2, l2, s3, l3),
            DType::BF16 => self.run::<half::bf16>(s1, l1, s2, l2, s3, l3),
            other => Err(cuda_err(format!("rope_split_qkv: {other:?}"))),
        }
    }
}

/// `qkv` `[n, (nh + 2 nkv) * hd]` to `(q [n, nh*hd], k [n, nkv*hd], v [n, nkv*hd])`, q and k
/// rotated by `cos`/`sin` (`[n, hd/2]` in qkv's type; `neox`: rotate halves, else pairs).
pub fn rope_split_qkv(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    (nh, nkv, hd): (usize, usize, usize),
    neox: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let n = qkv.dims2()?.0;
    let flat = qkv.contiguous()?.apply_op3_no_bwd(
        &cos.contiguous()?,
        &sin.contiguous()?,
        &RopeSplitQkv { nh, nkv, hd, neox },
    )?;
    let (qw, kw) = (nh * hd, nkv * hd);
    Ok((
        flat.narrow(0, 0, n * qw)?.reshape((n, qw))?,
        flat.narrow(0, n * qw, n * kw)?.reshape((n, kw))?,
        flat.narrow(0, n * (qw + kw), n * kw)?.reshape((n, kw))?,
    ))
}

struct SiluMulPacked;

impl SiluMulPacked {
    fn run<T: KernelType + CudaDType>(
        s1: &CudaStorage,
        l1: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, w) = l1.shape().dims2()?;
        if w % 2 != 0 {
            return Err(cuda_err("silu_mul_packed: odd width"));
        }
        let ff = w / 2;
        let gu = contiguous_view::<T>(s1, l1)?;
        let stream = s1.device.cuda_stream();
        let f = fused_module(&stream)?
            .load_function(&format!("silu_mul_packed_{}", T::SUFFIX))
            .map_err(cuda_err)?;
        // SAFETY: every element is written by the kernel before it is read.
        let mut out = unsafe { stream.alloc::<T>(rows * ff) }.map_err(cuda_err)?;
        let (rows_i, ff_i) = (rows as i64, ff as i64);
        let blocks = (rows * ff).div_ceil(256).min(65535 * 8) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks.max(1), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            stream
                .launch_builder(&f)
                .arg(&gu)
                .arg(&mut out)
                .arg(&rows_i)
                .arg(&ff_i)
                .launch(cfg)
                .map_err(cuda_err)?
        };
        Ok((
            CudaStorage::wrap_cuda_slice(out, s1.device.clone()),
            Shape::from((rows, ff)),
        ))
    }
}

impl candle_core::CustomOp1 for SiluMulPacked {
    fn name(&self) -> &'static str {
        "silu_mul_packed"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(cuda_err("silu_mul_packed runs on CUDA only"))
    }
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match s1.dtype() {
            DType::F32 => Self::run::<f32>(s1, l1),
            DType::F16 => Self::run::<half::f16>(s1, l1),
            DType::BF16 => Self::run::<half::bf16>(s1, l1),
            other => Err(cuda_err(format!("silu_mul_packed: {other:?}"))),
        }
    }
}

/// `[rows, 2 ff]` (gate, then up) to `silu(gate) * up` `[rows, ff]` in one kernel.
pub fn silu_mul_packed(gate_up: &Tensor) -> Result<Tensor> {
    Ok(gate_up.contiguous()?.apply_op1_no_bwd(&SiluMulPacked)?)
}
