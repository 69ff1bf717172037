//! The device's stream-ordered memory pool: keeping freed memory (FERROLM_POOL_KEEP=1: a
//! caching allocator, as PyTorch's, instead of handing memory back to the driver whenever
//! the stream is synchronised; the pool's default release threshold is 0, so every step's
//! activations are unmapped at its end and mapped again by the next; opt-in until a GPU run
//! measures it, scripts/gpu-check.sh runs the A/B) and trimming it before free memory is
//! measured.

use super::CudaResult;

fn default_pool(
    d: &candle_core::cuda::CudaDevice,
) -> CudaResult<cudarc::driver::sys::CUmemoryPool> {
    use cudarc::driver::sys;
    let stream = d.cuda_stream();
    stream.context().bind_to_thread()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: plain driver queries on the bound context's device.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, stream.context().cu_device()) }.result()?;
    Ok(pool)
}

/// Bytes the device's default memory pool keeps when the stream synchronises.
pub fn set_pool_release_threshold(d: &candle_core::cuda::CudaDevice, bytes: u64) -> CudaResult<()> {
    use cudarc::driver::sys;
    let pool = default_pool(d)?;
    let mut v = bytes;
    // SAFETY: the attribute takes a u64 by pointer.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut v as *mut u64 as *mut std::ffi::c_void,
        )
    }
    .result()?;
    Ok(())
}

/// Hands the pool's unused memory back to the driver (before measuring free memory).
pub fn trim_pool(d: &candle_core::cuda::CudaDevice) -> CudaResult<()> {
    let pool = default_pool(d)?;
    // SAFETY: trims only memory no allocation holds.
    unsafe { cudarc::driver::sys::cuMemPoolTrimTo(pool, 0) }.result()?;
    Ok(())
}
