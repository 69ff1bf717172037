//! The worker side of a step: the model runner over its KV cache, CUDA graphs of decode
//! steps, and the reference generation paths over the runner.

mod generate;
#[cfg(feature = "cuda")]
mod graphs;
mod pool;
mod runner;

pub use generate::{greedy_generate, teacher_forced_logprobs, Generation};
#[cfg(feature = "cuda")]
pub use graphs::DecodeGraphs;
pub use pool::{available_cores, compute_pool};
pub use runner::ModelRunner;
