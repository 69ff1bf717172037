//! Opening a GPU for the model: the driver check and the candle device on its own stream.

use super::pool::set_pool_release_threshold;

/// Whether libcuda can be opened (cudarc panics on first use otherwise).
pub fn cuda_driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// GPU `ordinal` as a candle device for the model: its own stream (one stream every thread
/// shares, unlike candle's default per-thread stream, so weights loaded on one thread are
/// ordered with the engine thread's kernels, and the stream can be captured into CUDA
/// graphs), and no cudarc event tracking (everything is ordered by that one stream; the
/// tracking cost two events per allocation and a wait and a record per kernel argument,
/// and an event recorded outside a graph capture cannot be waited on inside one).
pub fn model_device(ordinal: usize, pool_keep: bool) -> candle_core::Result<candle_core::Device> {
    if !cuda_driver_present() {
        candle_core::bail!("no CUDA driver on this host (libcuda.so not found)");
    }
    let dev = candle_core::Device::new_cuda_with_stream(ordinal)?;
    if let candle_core::Device::Cuda(d) = &dev {
        // SAFETY: every tensor of this device lives on its one stream (see above).
        unsafe { d.disable_event_tracking() };
        if pool_keep {
            set_pool_release_threshold(d, u64::MAX)
                .map_err(|e| candle_core::Error::Cuda(format!("memory pool: {e}").into()))?;
        }
    }
    Ok(dev)
}
