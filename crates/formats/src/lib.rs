//! ferrolm-formats: the readers of untrusted input, without candle, so that fuzz/ builds
//! them alone. GGUF headers and metadata ([`gguf`]), the GGUF tokenizer, its incremental
//! detokenizer and chat templates ([`tokenizer`]). The engine re-exports them under the same
//! paths and maps [`Error`] into its own error type.

pub mod error;
pub mod ggml;
pub mod gguf;
pub mod hf;
pub mod model_dir;
pub mod tokenizer;

pub use error::{Error, GgufError, Result};
