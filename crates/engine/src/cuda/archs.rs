//! The architectures this build's CUDA kernels were compiled for (FERROLM_CUDA_ARCHS at
//! build time: a cubin each, plus PTX of the newest; candle's kernels are PTX of the lowest,
//! CUDA_COMPUTE_CAP), and a GPU's compute capability, for the start-up check in
//! `crate::device`.

/// `"80;89;90"` (read at build time, in `crate::env`).
pub const BUILT_ARCHS: &str = crate::env::CUDA_ARCHS_BUILT;

/// The compute capability (major, minor) of a candle CUDA device.
pub fn compute_capability(d: &candle_core::cuda::CudaDevice) -> Result<(i32, i32), String> {
    d.cuda_stream()
        .context()
        .compute_capability()
        .map_err(|e| format!("compute capability: {e}"))
}
