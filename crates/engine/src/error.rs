//! The engine's one error type. The server maps it to OpenAI error JSON.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A GGUF that is truncated, corrupt or otherwise not what it claims to be.
    #[error("model file {path}: {message}")]
    BadModelFile { path: PathBuf, message: String },
    /// A well-formed file asking for something we do not implement (arch, tensor type, ...).
    #[error("unsupported model {path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A request the engine cannot run as asked (empty prompt, too long, bad parameter).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the prompt is {prompt_len} tokens long, which with max_tokens {max_tokens} exceeds the model's context of {max_model_len} tokens")]
    PromptTooLong {
        prompt_len: usize,
        max_tokens: usize,
        max_model_len: usize,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("the engine has stopped")]
    EngineStopped,
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
