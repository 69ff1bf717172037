//! GGUF weights kept in their blocks on a CUDA device: the block types our kernels take
//! (kernels/quant_matmul.cu), weights made for them, a CPU mirror of the kernels' unpacking
//! (tested everywhere), and (feature `cuda`) the weights on the device, their matmul and
//! its `gpu-check` rows.

#[cfg(feature = "cuda")]
mod checks;
mod chunks;
mod from_floats;
mod layout;
#[cfg(feature = "cuda")]
mod matmul;

#[cfg(feature = "cuda")]
pub use checks::quant_matmul_checks;
pub use chunks::{dot as chunk_dot, quantize_q8_1, unpack as unpack_chunk};
pub use from_floats::{device_type, quantize_gguf};
pub use layout::{random_blocks, DeviceQuantType};
#[cfg(feature = "cuda")]
pub use matmul::{CudaQuantWeight, QMV_LOOP_ROWS, QMV_MAX_ROWS};
