//! Whether this binary's kernels run on a GPU: ours are built as cubins for the
//! architectures in FERROLM_CUDA_ARCHS at build time plus PTX of the newest; candle's as PTX
//! of CUDA_COMPUTE_CAP (the lowest of them). A cubin runs on its major architecture at the
//! same or a later minor (sm_80 on sm_86 and sm_87); PTX JIT-compiles for the same or a later
//! architecture. Anything else would fail at the first kernel launch: say so at start-up.

/// The architectures this build's kernels were compiled for (`"80;89;90"`).
pub const BUILT_ARCHS: &str = env!("FERROLM_CUDA_ARCHS_BUILT");

/// An error naming the card and the build's architectures when they do not match.
pub fn check_coverage(capability: (i32, i32)) -> Result<(), String> {
    if crate::device::gpu_arch_covered(BUILT_ARCHS, capability) {
        return Ok(());
    }
    Err(format!(
        "this GPU is sm_{}{} and this build's CUDA kernels cover sm_{} (and later GPUs through PTX of the newest): rebuild with FERROLM_CUDA_ARCHS including {}{} (make build-cuda; the image's CUDA_ARCHS build argument)",
        capability.0,
        capability.1,
        BUILT_ARCHS.replace([';', ','], ", sm_"),
        capability.0,
        capability.1
    ))
}
