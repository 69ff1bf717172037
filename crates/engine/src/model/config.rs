//! Model hyper-parameters, read from GGUF metadata (a config.json: `hf_config.rs`).

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::KvCacheLayout;

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
    /// Per-frequency divisors of RoPE's base frequencies (llama3 scaling from a
    /// config.json; GGUF files carry them as the tensor `rope_freqs.weight` instead).
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Q/K/V projections have a bias (Qwen2).
    pub qkv_bias: bool,
    /// Per-head RMSNorm of Q and K before RoPE (Qwen3).
    pub qk_norm: bool,
    /// The output projection reads the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Gemma 3's departures from the Llama layout (`None` for the Llama family).
    pub gemma: Option<GemmaLayout>,
}

/// What Gemma 3 does differently: the embedding scaled by sqrt(hidden), a norm after
/// attention and after the MLP as well as before, GELU (tanh) instead of SiLU, its own
/// attention scale, and sliding-window layers with their own RoPE base. Norm weights are
/// held as transformers applies them, `1 + w` (llama.cpp's converter adds the 1 to GGUF files;
/// the checkpoint loader adds it).
#[derive(Debug, Clone, PartialEq)]
pub struct GemmaLayout {
    pub embed_scale: f32,
    /// Softmax scale: `query_pre_attn_scalar^-1/2`.
    pub attn_scale: f32,
    pub sliding_window: usize,
    /// Per layer: whether it attends within the window (else to the whole context).
    pub sliding_layers: Vec<bool>,
    /// RoPE base of the sliding-window layers (the global ones take `rope_theta`).
    pub rope_local_theta: f32,
}

impl GemmaLayout {
    /// Gemma 3's layer pattern: five sliding-window layers, then one global, repeated.
    pub fn pattern(num_layers: usize) -> Vec<bool> {
        (0..num_layers).map(|i| (i + 1) % 6 != 0).collect()
    }
}

impl LlamaConfig {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.meta_str("general.architecture")?.to_string();
        let rope_style = match arch.as_str() {
            "llama" | "mistral" => RopeStyle::Interleaved,
            "qwen2" | "qwen3" | "gemma3" => RopeStyle::Neox,
            other => {
                return Err(EngineError::Unsupported {
                    path: gguf.path().to_path_buf(),
                    message: format!(
                        "architecture {other:?} (supported: llama, mistral, qwen2, qwen3, gemma3)"
                    ),
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
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
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
        let num_layers = u("block_count")?;
        // llama.cpp hard-codes what a gemma3 GGUF does not carry (llama-model.cpp): one global
        // layer in every six, a local RoPE base of 10,000, and the scale 1/sqrt(head_dim)
        // (query_pre_attn_scalar equals head_dim in every Gemma 3 but 27B, which we refuse).
        let gemma = if arch == "gemma3" {
            if hidden_size == 5376 {
                return Err(EngineError::Unsupported {
                    path: gguf.path().to_path_buf(),
                    message: "Gemma 3 27B (its attention scale is not in the GGUF)".into(),
                });
            }
            Some(GemmaLayout {
                embed_scale: (hidden_size as f32).sqrt(),
                attn_scale: 1.0 / (head_dim as f32).sqrt(),
                sliding_window: u("attention.sliding_window")?,
                sliding_layers: GemmaLayout::pattern(num_layers),
                rope_local_theta: 10_000.0,
            })
        } else {
            None
        };
        Ok(Self {
            num_layers,
            intermediate_size: u("feed_forward_length")?,
            max_position_embeddings: u("context_length").unwrap_or(4096),
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
            rope_freq_factors: None,
            qkv_bias: false,
            qk_norm: matches!(arch.as_str(), "qwen3" | "gemma3"),
            tie_word_embeddings: false,
            gemma,
            arch,
        })
    }

    /// Parameters of the weights (for the weight-read floor: bytes = params * elem size).
    /// (hidden, heads, KV heads, head dim, MLP width): the shapes every weight is made of.
    pub fn dims(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.hidden_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.intermediate_size,
        )
    }

    /// Each layer's attention scale and sliding window, for the attention backends.
    pub fn layer_attention(&self) -> Vec<crate::attention::LayerAttention> {
        use crate::attention::LayerAttention;
        match &self.gemma {
            None => vec![LayerAttention::default(); self.num_layers],
            Some(g) => g
                .sliding_layers
                .iter()
                .map(|&local| LayerAttention {
                    scale: Some(g.attn_scale),
                    window: local.then_some(g.sliding_window),
                })
                .collect(),
        }
    }

    /// The paged KV cache's shape for this model.
    pub fn kv_layout(&self, num_blocks: usize, block_size: usize) -> KvCacheLayout {
        KvCacheLayout {
            num_layers: self.num_layers,
            num_blocks,
            block_size,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }

    pub fn num_params(&self) -> usize {
        let (h, q, kv, ff) = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        );
        let qk_norm = if self.qk_norm { 2 * self.head_dim } else { 0 };
        let post_norms = if self.gemma.is_some() { 2 * h } else { 0 };
        let layer = h * q + 2 * h * kv + q * h + 3 * h * ff + 2 * h + qk_norm + post_norms;
        let embed = self.vocab_size * h;
        self.num_layers * layer + embed * if self.tie_word_embeddings { 1 } else { 2 } + h
    }
}

/// transformers' `_compute_llama3_parameters`, as divisors of the base frequencies.
pub fn llama3_freq_factors(
    head_dim: usize,
    theta: f64,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    old_context_len: f64,
) -> Vec<f32> {
    let low_wavelen = old_context_len / low_freq_factor;
    let high_wavelen = old_context_len / high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let new = if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / factor
            } else {
                let smooth = (old_context_len / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * freq / factor + smooth * freq
            };
            (freq / new) as f32
        })
        .collect()
}
