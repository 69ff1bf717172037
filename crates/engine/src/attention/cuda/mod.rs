//! The CUDA attention backend: the paged KV cache on the device and our attention kernels.

mod backend;
pub mod checks;
mod checks_layers;
pub mod kernels;

pub use backend::CudaPagedAttention;
pub use checks::{check_kernels, time_decode_attention};
pub use checks_layers::check_layer_kernels;
pub use kernels::{gqa_kernel_built, CudaKernels, DecodeKernel, DecodeShape, HEAD_DIMS};
