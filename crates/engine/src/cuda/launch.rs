//! Loading our kernel modules once per process and viewing candle's CUDA storage, for the
//! custom ops in `ops/` and the attention backend.

use std::sync::{Arc, Mutex};

use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::Layout;
use cudarc::driver::{CudaModule, CudaStream, CudaView};

use super::kernels::{FUSED_FATBIN, GEMV_FATBIN};

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

pub(crate) fn fused_module(stream: &Arc<CudaStream>) -> candle_core::Result<Arc<CudaModule>> {
    static MODULE: Mutex<Option<Arc<CudaModule>>> = Mutex::new(None);
    load_once(&MODULE, FUSED_FATBIN, stream)
}

pub(crate) fn gemv_module(stream: &Arc<CudaStream>) -> candle_core::Result<Arc<CudaModule>> {
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

/// `impl candle_core::CustomOpN for $ty` for an op that runs on CUDA only (its CPU body is a
/// plain function beside it, chosen before the op is applied): `cpu_fwd` refuses, and
/// `cuda_fwd` binds `self` and the storages/layouts to the given names and runs `$body`.
macro_rules! cuda_only_op {
    ($op:ident, $name:expr, |$this:ident, $s1:ident, $l1:ident| $body:block) => {
        impl candle_core::CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                Err($crate::cuda::cuda_err(format!("{} runs on CUDA only", $name)))
            }
            fn cuda_fwd(
                &self,
                $s1: &candle_core::cuda::CudaStorage,
                $l1: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::cuda::CudaStorage, candle_core::Shape)> {
                let $this = self;
                $body
            }
        }
    };
    ($op:ident $(<$lt:lifetime>)?, $name:expr,
     |$this:ident, $s1:ident, $l1:ident, $s2:ident, $l2:ident| $body:block) => {
        impl candle_core::CustomOp2 for $op$(<$lt>)? {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                Err($crate::cuda::cuda_err(format!("{} runs on CUDA only", $name)))
            }
            fn cuda_fwd(
                &self,
                $s1: &candle_core::cuda::CudaStorage,
                $l1: &candle_core::Layout,
                $s2: &candle_core::cuda::CudaStorage,
                $l2: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::cuda::CudaStorage, candle_core::Shape)> {
                let $this = self;
                $body
            }
        }
    };
    ($op:ident, $name:expr,
     |$this:ident, $s1:ident, $l1:ident, $s2:ident, $l2:ident, $s3:ident, $l3:ident| $body:block) => {
        impl candle_core::CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            #[allow(clippy::too_many_arguments)]
            fn cpu_fwd(
                &self,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                Err($crate::cuda::cuda_err(format!("{} runs on CUDA only", $name)))
            }
            #[allow(clippy::too_many_arguments)]
            fn cuda_fwd(
                &self,
                $s1: &candle_core::cuda::CudaStorage,
                $l1: &candle_core::Layout,
                $s2: &candle_core::cuda::CudaStorage,
                $l2: &candle_core::Layout,
                $s3: &candle_core::cuda::CudaStorage,
                $l3: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::cuda::CudaStorage, candle_core::Shape)> {
                let $this = self;
                $body
            }
        }
    };
}
pub(crate) use cuda_only_op;

/// `$e` with the type name `$t` bound to the storage's float type (f32, f16 or bf16); any
/// other type is an error naming `$what`.
macro_rules! by_float_type {
    ($dtype:expr, $what:expr, $t:ident => $e:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $e
            }
            candle_core::DType::F16 => {
                type $t = half::f16;
                $e
            }
            candle_core::DType::BF16 => {
                type $t = half::bf16;
                $e
            }
            other => Err($crate::cuda::cuda_err(format!("{}: {other:?}", $what))),
        }
    };
}
pub(crate) use by_float_type;
