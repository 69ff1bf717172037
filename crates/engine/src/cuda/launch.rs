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
