//! CPU paged attention in plain Rust: the reference kernel, llama.cpp's f16 kernel with its
//! SIMD lanes, and the backends that own the caches.

mod backend;
mod lanes;
mod llama_cpp;
mod reference;
#[cfg(test)]
mod tests;

pub use backend::{CpuAttention, CpuCacheElem, CpuPagedAttention, CpuReferenceAttention};
pub use llama_cpp::paged_attention_cpu_f16;
pub use reference::{paged_attention_cpu, LayerAttention, PagedAttentionShape, StepRows};
