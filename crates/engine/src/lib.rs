//! ferrolm-engine: everything from token ids in to tokens out, no HTTP.
//!
//! Data flow (docs/architecture.md): a request's prompt is tokenized, the scheduler picks
//! what runs each step, the scheduler lays the step out as one [`batch::FlatBatch`], the
//! worker's runner computes it through the model and the paged attention backend, and the
//! sampler picks tokens. The modules keep one layer order (a module imports only from its own
//! layer or below, never in a cycle), written in docs/architecture.md and checked by
//! `scripts/check-layout.py` (`make layout`).

pub mod attention;
pub mod batch;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
#[cfg(feature = "cuda")]
pub mod diagnostics;
pub mod engine;
pub mod env;
pub mod error;
pub mod gguf;
pub mod inspect;
pub mod instrument;
pub mod kv_cache;
pub mod lcg;
pub mod loader;
pub mod model;
pub mod ops;
pub mod quant;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod structured;
pub mod tokenizer;
pub mod worker;

pub use error::{EngineError, InvalidParam, Result};
