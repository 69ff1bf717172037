//! Model hyper-parameters, read from GGUF metadata.

use std::path::Path;

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
    /// The output projection reads the embedding matrix.
    pub tie_word_embeddings: bool,
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
            rope_freq_factors: None,
            qkv_bias: false,
            tie_word_embeddings: false,
        })
    }

    /// From a Hugging Face `config.json` (llama, mistral, qwen2), for `--load-format dummy`.
    /// Hugging Face checkpoints rotate halves (neox style); llama3 rope scaling becomes
    /// per-frequency factors as transformers computes them.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let bad = |m: String| EngineError::BadModelFile {
            path: path.to_path_buf(),
            message: m,
        };
        let j: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let arch = j["model_type"].as_str().unwrap_or("").to_string();
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(EngineError::Unsupported {
                path: path.to_path_buf(),
                message: format!("model_type {arch:?} (supported: llama, mistral, qwen2)"),
            });
        }
        let req = |k: &str| -> Result<usize> {
            j[k].as_u64()
                .filter(|&v| v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| bad(format!("{k} is missing or not a positive integer")))
        };
        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_attention_heads")?;
        let num_kv_heads = j["num_key_value_heads"]
            .as_u64()
            .map(|v| v as usize)
            .unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(bad(format!(
                "{num_heads} attention heads cannot share {num_kv_heads} KV heads"
            )));
        }
        let head_dim = j["head_dim"]
            .as_u64()
            .map(|v| v as usize)
            .unwrap_or(hidden_size / num_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "head dimension {head_dim} is not a positive even number"
            )));
        }
        let rope_theta = j["rope_theta"].as_f64().unwrap_or(10_000.0) as f32;
        let max_position_embeddings =
            j["max_position_embeddings"].as_u64().unwrap_or(4096) as usize;
        let mut rope_linear_scale = 1.0;
        let mut rope_freq_factors = None;
        if let Some(rs) = j.get("rope_scaling").filter(|v| v.is_object()) {
            let kind = rs["rope_type"]
                .as_str()
                .or(rs["type"].as_str())
                .unwrap_or("");
            let factor = rs["factor"].as_f64().unwrap_or(1.0);
            match kind {
                "llama3" => {
                    rope_freq_factors = Some(llama3_freq_factors(
                        head_dim,
                        rope_theta as f64,
                        factor,
                        rs["low_freq_factor"].as_f64().unwrap_or(1.0),
                        rs["high_freq_factor"].as_f64().unwrap_or(4.0),
                        rs["original_max_position_embeddings"]
                            .as_f64()
                            .unwrap_or(8192.0),
                    ))
                }
                "linear" => rope_linear_scale = factor as f32,
                "default" | "" => {}
                other => {
                    return Err(EngineError::Unsupported {
                        path: path.to_path_buf(),
                        message: format!("rope scaling type {other:?}"),
                    })
                }
            }
        }
        Ok(Self {
            num_layers: req("num_hidden_layers")?,
            intermediate_size: req("intermediate_size")?,
            vocab_size: req("vocab_size")?,
            rms_norm_eps: j["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
            qkv_bias: arch == "qwen2" || j["attention_bias"].as_bool().unwrap_or(false),
            tie_word_embeddings: j["tie_word_embeddings"].as_bool().unwrap_or(false),
            arch,
            hidden_size,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_dim: head_dim,
            rope_theta,
            rope_style: RopeStyle::Neox,
            rope_linear_scale,
            rope_freq_factors,
            max_position_embeddings,
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
        let layer = h * q + 2 * h * kv + q * h + 3 * h * ff + 2 * h;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn configs_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/configs")
    }

    #[test]
    fn reads_the_shipped_configs() {
        let c = LlamaConfig::from_hf_json(&configs_dir().join("llama-3.1-8b.json")).unwrap();
        assert_eq!(
            (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads),
            (32, 4096, 32, 8)
        );
        assert_eq!(
            (c.head_dim, c.intermediate_size, c.vocab_size),
            (128, 14336, 128256)
        );
        assert_eq!(c.rope_style, RopeStyle::Neox);
        // Llama-3.1-8B has 8.03e9 parameters.
        assert_eq!(c.num_params(), 8_030_261_248);
        let q = LlamaConfig::from_hf_json(&configs_dir().join("qwen2.5-7b.json")).unwrap();
        assert!(q.qkv_bias);
        assert_eq!((q.num_heads, q.num_kv_heads, q.head_dim), (28, 4, 128));
        let m = LlamaConfig::from_hf_json(&configs_dir().join("mistral-7b.json")).unwrap();
        assert_eq!((m.vocab_size, m.rope_freq_factors.is_none()), (32768, true));
    }

    #[test]
    fn llama3_factors_follow_transformers() {
        let f = llama3_freq_factors(128, 500_000.0, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 64);
        // High frequencies are kept, low ones divided by the factor, the band between smooth.
        assert_eq!(f[0], 1.0);
        assert!((f[63] - 8.0).abs() < 1e-6);
        assert!(f.windows(2).all(|w| w[0] <= w[1] + 1e-6));
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("ferrolm-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.json");
        for (text, want) in [
            ("{", "not JSON"),
            (r#"{"model_type":"gpt2"}"#, "model_type"),
            (
                r#"{"model_type":"llama","hidden_size":64}"#,
                "num_attention_heads",
            ),
            (
                r#"{"model_type":"llama","hidden_size":64,"num_attention_heads":6,"num_key_value_heads":4}"#,
                "cannot share",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = LlamaConfig::from_hf_json(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
