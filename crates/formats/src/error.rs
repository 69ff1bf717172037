//! What can be wrong with a model file, its vocabulary or its chat template. The engine maps
//! these into its own `EngineError` (one `From` impl there).

use std::path::PathBuf;

use crate::ggml::GgmlType;

/// What is wrong with a GGUF's bytes; [`Error::Gguf`] adds the file's path.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("truncated or corrupt: {what} needs {needed} bytes at offset {offset} but the file has {len} bytes")]
    Truncated {
        what: String,
        needed: u64,
        offset: u64,
        len: u64,
    },
    #[error("not a GGUF file (magic {0:#010x})")]
    Magic(u32),
    #[error("unsupported GGUF version {0} (2 and 3 are read)")]
    Version(u32),
    #[error("{key}: unknown metadata value type {ty}")]
    ValueType { key: String, ty: u32 },
    #[error("{key}: unknown array element type {ty}")]
    ElementType { key: String, ty: u32 },
    #[error("{key}: arrays nested too deeply")]
    Nesting { key: String },
    #[error("general.alignment {0} is not a power of two")]
    Alignment(String),
    #[error("tensor {name}: {n_dims} dimensions")]
    Dims { name: String, n_dims: u32 },
    #[error("tensor {name}: {what} overflows")]
    Overflow { name: String, what: &'static str },
    #[error(
        "tensor {name}: row of {row} elements is not a multiple of the {ty:?} block of {block}"
    )]
    Row {
        name: String,
        row: u64,
        ty: GgmlType,
        block: u64,
    },
    #[error("truncated or corrupt: tensor {name} spans bytes {start}..{end} but the file has {len} bytes")]
    PastEnd {
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("tensor {0} appears twice")]
    Duplicate(String),
    #[error("tensor {0} is missing")]
    MissingTensor(String),
    /// A key the caller needs is absent or of another type (`want`: "a string", ...).
    #[error("metadata {key} is missing or not {want}")]
    Meta { key: String, want: &'static str },
    /// A value of the right type that cannot be right (a token id past the vocabulary, ...).
    #[error("metadata {key}: {message}")]
    BadMeta { key: String, message: String },
    #[error("the file shrank while being read")]
    Shrank,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A GGUF that is truncated, corrupt or inconsistent.
    #[error("model file {path}: {source}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    /// A Hugging Face checkpoint file (safetensors, its index, a JSON file) that is
    /// truncated, corrupt, inconsistent with the others, or missing.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// A model id that names no local folder and is not in the Hugging Face cache.
    #[error("model {model}: {message}")]
    ModelNotFound { model: String, message: String },
    /// A well-formed file asking for something we do not implement.
    #[error("unsupported model {path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    /// The vocabulary does not make a tokenizer, or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The template does not compile or fails while rendering.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The template's `raise_exception`: it refuses this conversation.
    #[error("the chat template rejected the messages: {0}")]
    TemplateRejected(String),
    /// The render went past one of its bounds (`RenderLimits`): the template's fault.
    #[error("chat template: {0}")]
    TemplateLimit(String),
}

impl Error {
    /// A reader's error for the file at `path` (I/O errors stay I/O errors).
    pub fn gguf(path: impl Into<PathBuf>, source: GgufError) -> Self {
        let path = path.into();
        match source {
            GgufError::Io(source) => Self::Io { path, source },
            source => Self::Gguf { path, source },
        }
    }
}

impl Error {
    /// A checkpoint error for the file at `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
