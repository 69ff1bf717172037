//! The engine's one error type, with a variant per kind of failure. The server maps it to
//! OpenAI error JSON in one place (its `api/error.rs`).

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
    /// A model named on the command line that is nowhere to be found (no file or folder, not
    /// in the Hugging Face cache).
    #[error("model {model}: {message}")]
    ModelNotFound { model: String, message: String },
    /// The tokenizer or the chat template failed (their errors, from `ferrolm-formats`).
    #[error(transparent)]
    Text(ferrolm_formats::Error),
    /// A request the engine cannot run as asked (empty prompt, too long, bad parameter).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the prompt is {prompt_len} tokens long, which with max_tokens {max_tokens} exceeds the model's context of {max_model_len} tokens")]
    PromptTooLong {
        prompt_len: usize,
        max_tokens: usize,
        max_model_len: usize,
    },
    /// Settings that cannot work together (flags, config files).
    #[error("configuration: {0}")]
    Config(String),
    /// Something this build, device or backend does not have.
    #[error("not available: {0}")]
    Unavailable(String),
    /// The CUDA driver or one of our kernel launches failed.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// Tensors of shapes or types that do not fit together (an engine bug or a bad file).
    #[error("shape: {0}")]
    Shape(String),
    /// A step's batch that the model or a backend cannot run (an engine bug).
    #[error("batch: {0}")]
    Batch(String),
    /// The KV cache cannot do what a step asks (slot outside it, no room for one request).
    #[error("KV cache: {0}")]
    Cache(String),
    /// A GPU check that could not run to its verdict.
    #[error("check: {0}")]
    Check(String),
    #[error("cannot start the engine thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
    #[error("the engine has stopped")]
    EngineStopped,
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}

impl EngineError {
    /// The one path from a CUDA driver or launcher error into ours.
    pub fn cuda(e: impl std::fmt::Display) -> Self {
        Self::Cuda(e.to_string())
    }
}

/// A request field out of range, named as the OpenAI API names it: the server answers 400
/// with it as `param`. Inside the engine it is an [`EngineError::InvalidRequest`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidParam {
    pub param: &'static str,
    pub message: String,
}

impl InvalidParam {
    pub fn new(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param,
            message: message.into(),
        }
    }
}

impl From<InvalidParam> for EngineError {
    fn from(e: InvalidParam) -> Self {
        Self::InvalidRequest(e.message)
    }
}

/// The readers of untrusted input (ferrolm-formats) answer in their own, more precise terms.
impl From<ferrolm_formats::Error> for EngineError {
    fn from(e: ferrolm_formats::Error) -> Self {
        use ferrolm_formats::Error as F;
        match e {
            F::Io { path, source } => Self::Io { path, source },
            F::Gguf { path, source } => Self::BadModelFile {
                path,
                message: source.to_string(),
            },
            F::Unsupported { path, message } => Self::Unsupported { path, message },
            F::Checkpoint { path, message } => Self::BadModelFile { path, message },
            F::ModelNotFound { model, message } => Self::ModelNotFound { model, message },
            e @ (F::Tokenizer(_) | F::ChatTemplate(_) | F::TemplateLimit(_)) => Self::Text(e),
            // The template refused the conversation: the request's fault.
            e @ F::TemplateRejected(_) => Self::InvalidRequest(e.to_string()),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
