//! The environment's switches as the forward pass uses them, resolved once when the model
//! gets them (the CPU instruction set: the probed one unless the switch says AVX2).

use crate::env::ModelSwitches;
use crate::quant::{cpu_isa, CpuIsa};

/// Which kernels the linear layers and fused ops run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kernels {
    /// Our fused CUDA kernels (SwiGLU, add+norm, split-and-rotate).
    pub fused_ops: bool,
    /// The skinny CUDA matmul for decode batches.
    pub gemv: bool,
    /// The CPU quantized matmul's instruction set.
    pub isa: CpuIsa,
}

/// The switches the model was given, and the kernels they choose.
#[derive(Debug, Clone)]
pub(crate) struct ForwardSwitches {
    pub env: ModelSwitches,
    pub kernels: Kernels,
}

impl ForwardSwitches {
    pub fn new(env: &ModelSwitches) -> Self {
        Self {
            kernels: Kernels {
                fused_ops: env.fused_ops,
                gemv: env.gemv,
                isa: if env.cpu_isa_avx2 {
                    CpuIsa::Avx2
                } else {
                    cpu_isa()
                },
            },
            env: env.clone(),
        }
    }
}

impl Default for ForwardSwitches {
    /// Every switch unset.
    fn default() -> Self {
        Self::new(&ModelSwitches::default())
    }
}
