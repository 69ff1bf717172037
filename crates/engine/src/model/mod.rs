//! Model code: configuration, RoPE tables and the Llama-family forward pass.

pub mod config;
pub mod llama;
pub mod rope;

pub use config::{LlamaConfig, RopeStyle};
pub use llama::LlamaModel;
