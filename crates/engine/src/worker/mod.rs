//! The worker side of a step: the model runner over its KV cache, CUDA graphs of decode
//! steps, and teacher-forced log-probs over the runner.

#[cfg(feature = "cuda")]
mod graphs;
mod pool;
mod runner;
mod teacher_forced;

#[cfg(feature = "cuda")]
pub use graphs::DecodeGraphs;
pub use pool::{available_cores, compute_pool, WarmWorkers};
pub use runner::ModelRunner;
pub use teacher_forced::teacher_forced_logprobs;
