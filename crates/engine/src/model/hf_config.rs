//! Model hyper-parameters from a Hugging Face `config.json`: the Llama family (Llama 2/3,
//! Mistral, Qwen2/2.5, Qwen3). Hugging Face checkpoints rotate halves (neox style); llama3
//! rope scaling becomes per-frequency factors as transformers computes them. A field that
//! would change the numbers and that we do not implement is an error naming it.

use std::path::Path;

use serde_json::Value;

use super::config::{llama3_freq_factors, GemmaLayout, LlamaConfig, RopeStyle};
use crate::error::{EngineError, Result};

/// `model_type`s we run, for messages.
pub const SUPPORTED_MODEL_TYPES: &str = "llama, mistral, qwen2, qwen3, gemma3_text";

impl LlamaConfig {
    /// From a `config.json` file (a checkpoint's, or a shape for `--load-format dummy`).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let j: Value = serde_json::from_str(&text).map_err(|e| EngineError::BadModelFile {
            path: path.to_path_buf(),
            message: format!("not JSON: {e}"),
        })?;
        Self::from_hf(&j, path)
    }

    /// From a parsed `config.json` (`path` names it in errors).
    pub fn from_hf(j: &Value, path: &Path) -> Result<Self> {
        let bad = |m: String| EngineError::BadModelFile {
            path: path.to_path_buf(),
            message: m,
        };
        let unsupported = |m: String| EngineError::Unsupported {
            path: path.to_path_buf(),
            message: m,
        };
        let arch = j["model_type"].as_str().unwrap_or("").to_string();
        if arch == "gemma3" {
            return Err(unsupported(
                "model_type gemma3 (Gemma 3 4B and larger, with a vision tower and a nested text_config): only the text-only gemma3_text checkpoints (270M, 1B) are supported so far".into(),
            ));
        }
        if !matches!(
            arch.as_str(),
            "llama" | "mistral" | "qwen2" | "qwen3" | "gemma3_text"
        ) {
            let named = j["architectures"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|a| a.as_str())
                .map(|a| format!(" ({a})"))
                .unwrap_or_default();
            return Err(unsupported(format!(
                "model_type {arch:?}{named} (supported: {SUPPORTED_MODEL_TYPES})"
            )));
        }
        refuse_unimplemented(j, &arch).map_err(unsupported)?;
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
        let rope = RopeFields::of(j);
        let rope_theta = rope.theta.unwrap_or(10_000.0) as f32;
        let num_layers = req("num_hidden_layers")?;
        let gemma = if arch == "gemma3_text" {
            Some(gemma_layout(j, &rope, hidden_size, head_dim, num_layers).map_err(unsupported)?)
        } else {
            None
        };
        let max_position_embeddings =
            j["max_position_embeddings"].as_u64().unwrap_or(4096) as usize;
        let mut rope_linear_scale = 1.0;
        let mut rope_freq_factors = None;
        if let Some(rs) = rope.scaling.filter(|v| v.is_object()) {
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
                    return Err(unsupported(format!(
                        "rope_scaling type {other:?} (supported: llama3, linear)"
                    )))
                }
            }
        }
        let intermediate_size = req("intermediate_size")?;
        let vocab_size = req("vocab_size")?;
        // Bounds far above any published model: a config is a file a user downloads, and
        // these sizes allocate (RoPE tables, the KV cache) before any tensor is read.
        for (k, v, max) in [
            ("hidden_size", hidden_size, 1 << 16),
            ("num_attention_heads", num_heads, 1 << 10),
            ("head_dim", head_dim, 1 << 12),
            ("num_hidden_layers", num_layers, 1 << 10),
            ("intermediate_size", intermediate_size, 1 << 20),
            ("vocab_size", vocab_size, 1 << 22),
            ("max_position_embeddings", max_position_embeddings, 1 << 24),
        ] {
            if v > max {
                return Err(bad(format!("{k} {v} is over the limit of {max}")));
            }
        }
        Ok(Self {
            num_layers,
            intermediate_size,
            vocab_size,
            rms_norm_eps: j["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
            qkv_bias: arch == "qwen2" || j["attention_bias"].as_bool().unwrap_or(false),
            qk_norm: matches!(arch.as_str(), "qwen3" | "gemma3_text"),
            gemma,
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
}

/// Where a config keeps RoPE: `rope_theta`, `rope_scaling` and (Gemma 3)
/// `rope_local_base_freq` as published checkpoints have them, or transformers 5's
/// `rope_parameters` (flat, or per layer type for Gemma 3).
struct RopeFields<'a> {
    theta: Option<f64>,
    /// The object whose `rope_type`/`type` and factors give the scaling.
    scaling: Option<&'a Value>,
    local_theta: Option<f64>,
}

impl<'a> RopeFields<'a> {
    fn of(j: &'a Value) -> Self {
        match j.get("rope_parameters").filter(|v| v.is_object()) {
            Some(p) => {
                let (full, local) = match p.get("full_attention") {
                    Some(full) => (full, p.get("sliding_attention")),
                    None => (p, None),
                };
                Self {
                    theta: full["rope_theta"].as_f64(),
                    scaling: Some(full),
                    local_theta: local.and_then(|l| l["rope_theta"].as_f64()),
                }
            }
            None => Self {
                theta: j["rope_theta"].as_f64(),
                scaling: j.get("rope_scaling"),
                local_theta: j["rope_local_base_freq"].as_f64(),
            },
        }
    }
}

/// Gemma 3's layout from its config: the layer pattern from `layer_types` (transformers 4.5x
/// and later) or `sliding_window_pattern`, the window, the local RoPE base, the attention
/// scale from `query_pre_attn_scalar`.
fn gemma_layout(
    j: &Value,
    rope: &RopeFields,
    hidden: usize,
    head_dim: usize,
    num_layers: usize,
) -> std::result::Result<GemmaLayout, String> {
    let sliding_layers = match j["layer_types"].as_array() {
        Some(types) => {
            if types.len() != num_layers {
                return Err(format!(
                    "layer_types has {} entries for {num_layers} layers",
                    types.len()
                ));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    other => Err(format!("layer type {other:?}")),
                })
                .collect::<std::result::Result<Vec<bool>, String>>()?
        }
        None => {
            let every = j["sliding_window_pattern"]
                .as_u64()
                .or(j["_sliding_window_pattern"].as_u64())
                .unwrap_or(6)
                .max(1) as usize;
            (0..num_layers).map(|i| (i + 1) % every != 0).collect()
        }
    };
    let sliding_window = j["sliding_window"]
        .as_u64()
        .filter(|&w| w > 0)
        .ok_or("sliding_window is missing or 0")? as usize;
    let scalar = j["query_pre_attn_scalar"]
        .as_f64()
        .unwrap_or(head_dim as f64);
    Ok(GemmaLayout {
        embed_scale: (hidden as f32).sqrt(),
        attn_scale: (1.0 / scalar.sqrt()) as f32,
        sliding_window,
        sliding_layers,
        rope_local_theta: rope.local_theta.unwrap_or(10_000.0) as f32,
    })
}

/// Fields that change the numbers and that we do not implement, by name.
fn refuse_unimplemented(j: &Value, arch: &str) -> std::result::Result<(), String> {
    let act = j["hidden_activation"].as_str().or(j["hidden_act"].as_str());
    let want = if arch == "gemma3_text" {
        "gelu_pytorch_tanh"
    } else {
        "silu"
    };
    if let Some(act) = act.filter(|a| *a != want) {
        return Err(format!(
            "hidden_act {act:?} (only {want} is implemented for {arch})"
        ));
    }
    for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if j.get(k).is_some_and(|v| !v.is_null()) {
            return Err(format!(
                "{k} {} (logit soft-capping is not implemented)",
                j[k]
            ));
        }
    }
    if j["use_bidirectional_attention"].as_bool() == Some(true) {
        return Err("use_bidirectional_attention: true (only causal attention)".into());
    }
    if j["mlp_bias"].as_bool() == Some(true) {
        return Err("mlp_bias: true (MLP biases are not implemented)".into());
    }
    if let Some(f) = j["partial_rotary_factor"].as_f64().filter(|&f| f != 1.0) {
        return Err(format!(
            "partial_rotary_factor {f} (partial RoPE is not implemented)"
        ));
    }
    if j.get("quantization_config").is_some_and(|q| !q.is_null()) {
        let method = j["quantization_config"]["quant_method"]
            .as_str()
            .unwrap_or("?");
        return Err(format!(
            "quantization_config (quant_method {method:?}): quantized safetensors checkpoints are not supported yet; use a GGUF or an unquantized checkpoint"
        ));
    }
    // A sliding window shorter than the context changes attention. Qwen2/3 configs carry one
    // that `use_sliding_window: false` turns off.
    let window_on = match arch {
        "qwen2" | "qwen3" => j["use_sliding_window"].as_bool().unwrap_or(false),
        // Gemma 3's sliding-window layers are implemented.
        "gemma3_text" => false,
        _ => true,
    };
    if let (true, Some(w)) = (window_on, j["sliding_window"].as_u64()) {
        let ctx = j["max_position_embeddings"].as_u64().unwrap_or(u64::MAX);
        if w < ctx {
            return Err(format!(
                "sliding_window {w} (shorter than the context of {ctx}; sliding-window attention is not implemented)"
            ));
        }
    }
    Ok(())
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
    fn transformers_5_rope_parameters_are_read() {
        let j: Value = serde_json::from_str(
            r#"{"model_type":"llama","hidden_size":64,"num_attention_heads":4,"num_hidden_layers":1,
                "intermediate_size":8,"vocab_size":8,"rope_parameters":{"rope_theta":500000.0,
                "rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
                "original_max_position_embeddings":64}}"#,
        )
        .unwrap();
        let c = LlamaConfig::from_hf(&j, Path::new("config.json")).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(c.rope_freq_factors.is_some());
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("ferrolm-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.json");
        for (text, want) in [
            ("{", "not JSON"),
            (
                r#"{"model_type":"mistral","sliding_window":4096,"max_position_embeddings":32768}"#,
                "sliding_window 4096",
            ),
            (
                r#"{"model_type":"phi3","architectures":["Phi3ForCausalLM"]}"#,
                "Phi3ForCausalLM",
            ),
            (r#"{"model_type":"gemma3","text_config":{}}"#, "gemma3_text"),
            (
                r#"{"model_type":"llama","hidden_act":"gelu"}"#,
                "hidden_act",
            ),
            (
                r#"{"model_type":"qwen3","quantization_config":{"quant_method":"awq"}}"#,
                "awq",
            ),
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
