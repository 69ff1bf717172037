//! GPU self-checks (`ferrolm gpu-check`), apart from production code: the whole model on
//! the GPU against the CPU and against itself batched differently, and the orchestration of
//! every kernel's check (the kernel checks themselves live beside their kernels).

mod gpu_check;
mod model_check;

pub use gpu_check::{run_gpu_checks, GpuCheckOptions};
pub use model_check::model_checks;
