//! Model code: configuration, RoPE tables, weights and the Llama-family forward pass. One
//! file per architecture's forward; loading (GGUF, dummy) beside it.

pub mod config;
mod dummy;
mod gguf_load;
pub mod llama;
pub mod rope;
mod weights;

pub use config::{LlamaConfig, RopeStyle};
pub use llama::LlamaModel;
