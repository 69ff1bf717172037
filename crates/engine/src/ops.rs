//! Fused CUDA ops of the Llama block (kernels/fused.cu) as candle custom ops:
//! `silu_mul` (SiLU-and-mul) and `add_rms_norm` (residual add + RMSNorm in one pass).
//! Set FERROLM_NO_FUSED=1 to run candle's separate ops instead (a fallback and an A/B).

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{CustomOp2, DType, Layout, Shape, Storage, Tensor};
use cudarc::driver::{CudaModule, CudaStream, CudaView, DevicePtr, LaunchConfig, PushKernelArg};

use crate::attention::cuda::{KernelType, FUSED_FATBIN, GEMV_FATBIN};
use crate::error::{EngineError, Result};

pub fn fused_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FERROLM_NO_FUSED").is_none())
}

/// candle's error for anything the CUDA driver says.
pub(crate) fn cuda_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Cuda(e.to_string().into())
}

/// A module of our kernels, loaded once per process (on the first stream that asks).
fn load_once(
    cell: &Mutex<Option<Arc<CudaModule>>>,
    fatbin: &[u8],
    stream: &Arc<CudaStream>,
) -> candle_core::Result<Arc<CudaModule>> {
    let mut m = cell.lock().map_err(cuda_err)?;
    if let Some(m) = m.as_ref() {
        return Ok(m.clone());
    }
    let loaded = stream
        .context()
        .load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec()))
        .map_err(cuda_err)?;
    *m = Some(loaded.clone());
    Ok(loaded)
}

fn fused_module(stream: &Arc<CudaStream>) -> candle_core::Result<Arc<CudaModule>> {
    static MODULE: Mutex<Option<Arc<CudaModule>>> = Mutex::new(None);
    load_once(&MODULE, FUSED_FATBIN, stream)
}

fn gemv_module(stream: &Arc<CudaStream>) -> candle_core::Result<Arc<CudaModule>> {
    static MODULE: Mutex<Option<Arc<CudaModule>>> = Mutex::new(None);
    load_once(&MODULE, GEMV_FATBIN, stream)
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

/// Rows of x the skinny matmul takes (decode batches up to this size).
pub const GEMV_MAX_ROWS: usize = 4;

/// Whether the skinny matmul kernels run (FERROLM_GEMV=0 leaves every matmul to cuBLAS).
pub fn gemv_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERROLM_GEMV").map_or(true, |v| v != "0"))
}

/// `y = x w^T` for `x` `[m <= 4, k]` and a row-major weight `w` `[n, k]` (kernels/gemv.cu).
struct Gemv;

impl Gemv {
    fn run<T: KernelType + CudaDType>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        let vec = 16 / std::mem::size_of::<T>();
        if k != k2 || m == 0 || m > GEMV_MAX_ROWS || k % vec != 0 {
            return Err(cuda_err("gemv: shapes not supported"));
        }
        let (x, w) = (contiguous_view::<T>(s1, l1)?, contiguous_view::<T>(s2, l2)?);
        let stream = s1.device.cuda_stream();
        for p in [x.device_ptr(&stream).0, w.device_ptr(&stream).0] {
            if p % 16 != 0 {
                return Err(cuda_err("gemv: rows are not 16-byte aligned"));
            }
        }
        let f = gemv_module(&stream)?
            .load_function(&format!("gemv_m{m}_{}", T::SUFFIX))
            .map_err(cuda_err)?;
        // SAFETY: every output element is written by its warp's lane 0.
        let mut out = unsafe { stream.alloc::<T>(m * n) }.map_err(cuda_err)?;
        let (n_i, k_i) = (n as i32, k as i32);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            stream
                .launch_builder(&f)
                .arg(&x)
                .arg(&w)
                .arg(&mut out)
                .arg(&n_i)
                .arg(&k_i)
                .launch(cfg)
                .map_err(cuda_err)?
        };
        Ok((
            CudaStorage::wrap_cuda_slice(out, s1.device.clone()),
            Shape::from((m, n)),
        ))
    }
}

impl CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "gemv"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(cuda_err("gemv runs on CUDA only"))
    }
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        if s1.dtype() != s2.dtype() {
            return Err(cuda_err("gemv: x and w differ in type"));
        }
        match s1.dtype() {
            DType::F32 => Self::run::<f32>(s1, l1, s2, l2),
            DType::F16 => Self::run::<half::f16>(s1, l1, s2, l2),
            DType::BF16 => Self::run::<half::bf16>(s1, l1, s2, l2),
            other => Err(cuda_err(format!("gemv: {other:?}"))),
        }
    }
}

/// `x w^T` through the skinny matmul kernel when it applies (CUDA, `x` of at most
/// [`GEMV_MAX_ROWS`] rows, both contiguous, same type, `k` a multiple of a 16-byte vector,
/// 16-byte aligned rows); `None` leaves the matmul to cuBLAS.
pub fn gemv(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if !gemv_enabled() || !x.device().is_cuda() || x.dtype() != w.dtype() {
        return Ok(None);
    }
    let (Ok((m, k)), Ok((_, k2))) = (x.dims2(), w.dims2()) else {
        return Ok(None);
    };
    let vec = 16 / x.dtype().size_in_bytes();
    let aligned = |t: &Tensor| t.is_contiguous() && t.layout().start_offset() % vec == 0;
    if m == 0 || m > GEMV_MAX_ROWS || k != k2 || k % vec != 0 || !aligned(x) || !aligned(w) {
        return Ok(None);
    }
    Ok(Some(x.apply_op2_no_bwd(w, &Gemv)?))
}

/// `gpu-check` rows for the skinny matmul: against cuBLAS (candle's matmul) for 1-4 rows
/// in each type, then its read rate beside cuBLAS's on an 8B MLP weight (bf16, one row).
pub fn gemv_checks(dev: &candle_core::Device) -> Vec<crate::attention::cuda::CheckRow> {
    use crate::attention::cuda::CheckRow;
    let mut rows = Vec::new();
    let mut seed = 5u64;
    for (dt, tol) in [
        (DType::F32, 1e-4f32),
        (DType::F16, 1e-2),
        (DType::BF16, 2e-2),
    ] {
        for m in 1..=GEMV_MAX_ROWS {
            let (n, k) = (1031usize, 4096usize);
            let r = (|| -> Result<(bool, String)> {
                let x =
                    Tensor::from_vec(crate::attention::lcg_uniform(m * k, &mut seed), (m, k), dev)?
                        .to_dtype(dt)?;
                let w =
                    Tensor::from_vec(crate::attention::lcg_uniform(n * k, &mut seed), (n, k), dev)?
                        .to_dtype(dt)?;
                let got = gemv(&x, &w)?
                    .ok_or_else(|| EngineError::Config("gemv did not apply".into()))?
                    .to_dtype(DType::F32)?;
                let want = x
                    .to_dtype(DType::F32)?
                    .matmul(&w.to_dtype(DType::F32)?.t()?)?;
                let scale = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
                let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
                Ok((
                    err <= tol,
                    format!("rel err {err:.1e} (limit {tol:.0e}) vs f32 matmul"),
                ))
            })();
            rows.push(match r {
                Ok((ok, detail)) => CheckRow {
                    name: format!("gemv {dt:?} m{m} n{n} k{k}"),
                    ok,
                    detail,
                },
                Err(e) => CheckRow {
                    name: format!("gemv {dt:?} m{m}"),
                    ok: false,
                    detail: format!("error: {e}"),
                },
            });
        }
    }
    let timing = (|| -> Result<String> {
        let (n, k) = (14336usize, 4096usize);
        let x = Tensor::from_vec(crate::attention::lcg_uniform(k, &mut seed), (1, k), dev)?
            .to_dtype(DType::BF16)?;
        let w = Tensor::from_vec(crate::attention::lcg_uniform(n * k, &mut seed), (n, k), dev)?
            .to_dtype(DType::BF16)?;
        let bytes = (n * k * 2) as f64;
        let time = |f: &dyn Fn() -> Result<Tensor>| -> Result<f64> {
            for _ in 0..3 {
                f()?;
            }
            dev.synchronize()?;
            let t = std::time::Instant::now();
            let iters = 50;
            for _ in 0..iters {
                f()?;
            }
            dev.synchronize()?;
            Ok(t.elapsed().as_secs_f64() / iters as f64)
        };
        let ours = time(&|| {
            gemv(&x, &w)?.ok_or_else(|| EngineError::Config("gemv did not apply".into()))
        })?;
        let cublas = time(&|| Ok(x.matmul(&w.t()?)?))?;
        Ok(format!(
            "ours {:.0} GB/s ({:.1} us) · cuBLAS {:.0} GB/s ({:.1} us)",
            bytes / ours / 1e9,
            ours * 1e6,
            bytes / cublas / 1e9,
            cublas * 1e6
        ))
    })();
    rows.push(match timing {
        Ok(detail) => CheckRow {
            name: "gemv bf16 m1 n14336 k4096 read rate".into(),
            ok: true,
            detail,
        },
        Err(e) => CheckRow {
            name: "gemv timing".into(),
            ok: false,
            detail: format!("error: {e}"),
        },
    });
    rows
}
