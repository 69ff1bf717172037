//! The GPU beneath the model (feature `cuda`): opening the device, its memory pool, our
//! kernels' fatbins and loading them, and the one error path from the driver into ours.

mod archs;
mod device;
mod kernels;
mod launch;
mod pool;

pub use archs::{compute_capability, BUILT_ARCHS};
pub use device::{cuda_driver_present, model_device};
pub(crate) use kernels::{
    KernelType, PAGED_ATTENTION_FATBIN, PAGED_ATTENTION_GQA_FATBIN, PREFILL_ATTENTION_FATBIN,
    RESHAPE_AND_CACHE_FATBIN,
};
pub(crate) use launch::{
    by_float_type, contiguous_view, cuda_err, cuda_only_op, fused_module, gemv_module,
    launch_config, launch_op, quant_module, sampling_module, OpInput, OpLaunch, OpResult,
};
pub use pool::{set_pool_release_threshold, trim_pool};

/// What the driver and our kernel launchers fail with (converted into `EngineError::Cuda`).
pub type CudaResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
