//! ferrolm-engine: everything from token ids in to tokens out, no HTTP.
//!
//! Data flow (see DESIGN.md in the repository): a request's prompt is tokenized, the
//! scheduler picks what runs each step, the runner lays the step out as one [`batch::FlatBatch`],
//! the model computes it through the paged attention backend, and the sampler picks tokens.

pub mod attention;
pub mod batch;
pub mod engine;
pub mod error;
pub mod ggml_arith;
pub mod gguf;
pub mod graphs;
pub mod kv_cache;
pub mod loader;
pub mod model;
#[cfg(feature = "cuda")]
pub mod model_check;
#[cfg(feature = "cuda")]
pub mod ops;
pub mod profile;
pub mod quant;
pub mod runner;
pub mod sampling;
pub mod scheduler;
pub mod tokenizer;

pub use error::{EngineError, Result};
