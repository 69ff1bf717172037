//! Model hyper-parameters, read from GGUF metadata.

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's "normal" style, which GGUF llama files use
    /// (the converter permutes Q/K so this equals Hugging Face's rotate-half).
    Interleaved,
    /// Halves (i, i + d/2): GPT-NeoX style (Qwen2, ...).
    Neox,
}

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub arch: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// Linear position scaling (`rope.scaling.factor` with type "linear").
    pub rope_linear_scale: f32,
    pub max_position_embeddings: usize,
}

impl LlamaConfig {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.meta_str("general.architecture")?.to_string();
        let rope_style = match arch.as_str() {
            "llama" | "mistral" => RopeStyle::Interleaved,
            "qwen2" => RopeStyle::Neox,
            other => {
                return Err(EngineError::Unsupported {
                    path: gguf.path().to_path_buf(),
                    message: format!("architecture {other:?} (supported: llama, mistral, qwen2)"),
                })
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| gguf.meta_u64(&key(k)).map(|v| v as usize);
        let hidden_size = u("embedding_length")?;
        let num_heads = u("attention.head_count")?;
        let num_kv_heads = match gguf.meta(&key("attention.head_count_kv")) {
            Some(v) => v.as_u64().unwrap_or(num_heads as u64) as usize,
            None => num_heads,
        };
        let bad = |m: String| EngineError::BadModelFile {
            path: gguf.path().to_path_buf(),
            message: m,
        };
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(bad(format!(
                "{num_heads} attention heads cannot share {num_kv_heads} KV heads"
            )));
        }
        let head_dim = match gguf.meta(&key("attention.key_length")) {
            Some(v) => v.as_u64().unwrap_or(0) as usize,
            None => hidden_size / num_heads,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(format!(
                "head dimension {head_dim} is not a positive even number"
            )));
        }
        let rope_dim = match gguf.meta(&key("rope.dimension_count")) {
            Some(v) => v.as_u64().unwrap_or(head_dim as u64) as usize,
            None => head_dim,
        };
        if rope_dim != head_dim {
            return Err(EngineError::Unsupported {
                path: gguf.path().to_path_buf(),
                message: format!("partial rotary embedding ({rope_dim} of {head_dim} dims)"),
            });
        }
        let vocab_size = match gguf.meta(&key("vocab_size")) {
            Some(v) => v.as_u64().unwrap_or(0) as usize,
            None => gguf
                .meta("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .unwrap_or(0),
        };
        let rope_theta = match gguf.meta(&key("rope.freq_base")) {
            Some(v) => v.as_f64().unwrap_or(10_000.0) as f32,
            None => 10_000.0,
        };
        let rope_linear_scale = match gguf
            .meta(&key("rope.scaling.type"))
            .and_then(|v| v.as_str())
        {
            Some("linear") => gguf.meta_f32(&key("rope.scaling.factor")).unwrap_or(1.0),
            Some("none") | None => 1.0,
            Some(other) => {
                return Err(EngineError::Unsupported {
                    path: gguf.path().to_path_buf(),
                    message: format!("rope scaling type {other:?}"),
                })
            }
        };
        let rms_norm_eps = gguf.meta_f32(&key("attention.layer_norm_rms_epsilon"))?;
        Ok(Self {
            num_layers: u("block_count")?,
            intermediate_size: u("feed_forward_length")?,
            max_position_embeddings: u("context_length").unwrap_or(4096),
            arch,
            hidden_size,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_dim,
            vocab_size,
            rms_norm_eps,
            rope_theta,
            rope_style,
            rope_linear_scale,
        })
    }
}
