//! The instruction set the CPU quantized matmul runs with: chosen by a probe that runs the
//! instruction ([`cpu_isa`]), narrowed by the caller's switch (`FERROLM_CPU_ISA=avx2`).

/// An instruction set of the CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuIsa {
    /// A build without AVX2 (not x86-64-v3): the portable dot products.
    Portable,
    Avx2,
    Avx512Vnni,
}

impl CpuIsa {
    /// This instruction set without AVX-512 (the switch for an A/B run).
    pub fn without_avx512(self) -> Self {
        match self {
            Self::Avx512Vnni => Self::Avx2,
            other => other,
        }
    }
}

/// The instruction set of this build: the portable kernels (an AVX2 build probes the
/// machine: `gemm::cpu_isa`).
#[cfg(not(x86_v3))]
pub fn cpu_isa() -> CpuIsa {
    CpuIsa::Portable
}
