//! Model code: configuration, RoPE tables, weights and the Llama-family forward pass. One
//! file per architecture's forward; loading (GGUF, dummy) beside it.

pub mod config;
mod dummy;
mod gguf_load;
mod hf_config;
mod in_situ;
pub mod llama;
pub mod rope;
mod safetensors_load;
mod switches;
mod weights;

pub use config::{LlamaConfig, RopeStyle};
pub use hf_config::SUPPORTED_MODEL_TYPES;
pub use in_situ::{InSituReport, InSituSource};
pub use llama::LlamaModel;
