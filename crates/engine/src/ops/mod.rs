//! The model's tensor ops, one home per op: its CPU body (llama.cpp's arithmetic, from
//! `ggml_arith`), its CUDA custom op (our kernels in kernels/) and the dispatch between
//! them and candle's generic ops.

pub mod ggml_arith;
mod norm;
mod rotary;
#[cfg(feature = "cuda")]
mod skinny_matmul;
mod swiglu;
mod tensor;
#[cfg(test)]
mod tests;

pub use norm::{add_rms_norm, rms_norm};
pub use rotary::{rope_cpu, rope_split_qkv};
#[cfg(feature = "cuda")]
pub use skinny_matmul::{gemv, gemv_checks, GEMV_MAX_ROWS};
pub use swiglu::{silu_mul, silu_mul_packed};
pub use tensor::with_f32;
