//! `ferrolm inspect`: what a GGUF file or a Hugging Face checkpoint holds (architecture,
//! shapes, parameters, each kind of tensor's type, context, tokenizer, chat template,
//! generation defaults), read from headers and JSON files without loading the weights.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use ferrolm_formats::hf::hub::{HubSettings, ModelLocation};
use ferrolm_formats::hf::safetensors::Checkpoint;
use ferrolm_formats::hf::HfFolder;

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::loader::locate;
use crate::model::LlamaConfig;
use crate::tokenizer::Tokenizer;

/// The report for `model` (a GGUF file, a checkpoint folder or a cached hub id).
pub fn inspect(model: &str, revision: Option<&str>, hub: &HubSettings) -> Result<String> {
    match locate(model, revision, hub)? {
        ModelLocation::Gguf(p) => inspect_gguf(&p),
        ModelLocation::Folder(d) => inspect_folder(&d),
    }
}

/// A tensor's kind: its name without the layer number (`blk.3.attn_q.weight` ->
/// `blk.*.attn_q.weight`), so that a report has one line per kind.
fn kind(name: &str) -> String {
    name.split('.')
        .map(|part| {
            if part.parse::<u64>().is_ok() {
                "*"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Lines `kind: TYPE [shape] × count`, one per (kind, type, shape).
fn tensor_lines(out: &mut String, tensors: impl Iterator<Item = (String, String, Vec<u64>)>) {
    let mut kinds: BTreeMap<(String, String, Vec<u64>), usize> = BTreeMap::new();
    for (name, ty, shape) in tensors {
        *kinds.entry((kind(&name), ty, shape)).or_default() += 1;
    }
    for ((k, ty, shape), n) in kinds {
        let _ = writeln!(out, "  {k}: {ty} {shape:?} × {n}");
    }
}

/// Whether we run it, and if so its shapes, context and parameters.
fn config_lines(out: &mut String, config: Result<LlamaConfig>) {
    let c = match config {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "supported: no ({e})");
            return;
        }
    };
    let _ = writeln!(out, "supported: yes");
    let _ = writeln!(
        out,
        "shape: {} layers · hidden {} · {} heads / {} KV heads · head_dim {} · ffn {} · vocab {}",
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size
    );
    let mut extras = Vec::new();
    if c.qkv_bias {
        extras.push("QKV bias".to_string());
    }
    if c.qk_norm {
        extras.push("per-head Q/K norm".to_string());
    }
    if c.tie_word_embeddings {
        extras.push("tied embeddings".to_string());
    }
    if c.rope_freq_factors.is_some() {
        extras.push("llama3 RoPE scaling".to_string());
    }
    let _ = writeln!(
        out,
        "context: {} tokens · RoPE theta {}{}",
        c.max_position_embeddings,
        c.rope_theta,
        if extras.is_empty() {
            String::new()
        } else {
            format!(" · {}", extras.join(" · "))
        }
    );
    let _ = writeln!(out, "parameters: {:.2}M", c.num_params() as f64 / 1e6);
}

fn tokenizer_line(out: &mut String, source: &str, t: &Tokenizer) {
    let piece = |id: Option<u32>| {
        id.and_then(|i| t.piece(i).map(|p| format!("{p:?} ({i})")))
            .unwrap_or_else(|| "none".into())
    };
    let _ = writeln!(
        out,
        "tokenizer: {source}, {} tokens · BOS {}{} · EOS {} · end-of-generation ids {:?}",
        t.vocab_size(),
        piece(t.bos_id),
        if t.add_bos { " (added)" } else { "" },
        piece(t.eos_id),
        t.eog_ids
    );
    let _ = writeln!(
        out,
        "chat template: {}",
        match &t.chat_template {
            Some(s) => format!("yes ({} bytes)", s.len()),
            None => "none".into(),
        }
    );
}

fn inspect_gguf(path: &Path) -> Result<String> {
    let g = GgufFile::open(path)?;
    let mut out = String::new();
    let _ = writeln!(out, "model: {}", path.display());
    let _ = writeln!(
        out,
        "format: GGUF v{} · {} tensors",
        g.version,
        g.tensors.len()
    );
    let arch = g
        .meta_str("general.architecture")
        .unwrap_or("?")
        .to_string();
    let _ = writeln!(out, "architecture: {arch}");
    config_lines(&mut out, LlamaConfig::from_gguf(&g));
    let _ = writeln!(out, "tensors:");
    tensor_lines(
        &mut out,
        g.tensor_order.iter().map(|name| {
            let t = &g.tensors[name];
            let ty = t
                .ggml_type
                .map_or_else(|| format!("type {}", t.type_id), |ty| format!("{ty:?}"));
            (name.clone(), ty, t.ne.clone())
        }),
    );
    match Tokenizer::from_gguf(&g) {
        Ok(t) => {
            let kind = match g.meta_str("tokenizer.ggml.model") {
                Ok("llama") => "GGUF SentencePiece",
                _ => "GGUF byte-level BPE",
            };
            tokenizer_line(&mut out, kind, &t)
        }
        Err(e) => {
            let _ = writeln!(out, "tokenizer: unreadable ({e})");
        }
    }
    Ok(out)
}

fn inspect_folder(dir: &Path) -> Result<String> {
    let f = HfFolder::open(dir)?;
    let mut out = String::new();
    let ckpt = Checkpoint::open_dir(dir)?;
    let _ = writeln!(out, "model: {}", dir.display());
    let _ = writeln!(
        out,
        "format: Hugging Face checkpoint · {} safetensors file(s) · {} tensors · {:.1} MB",
        ckpt.files().len(),
        ckpt.names().len(),
        ckpt.data_bytes() as f64 / 1e6
    );
    let model_type = f.config["model_type"].as_str().unwrap_or("?");
    let archs = f.config["architectures"].to_string();
    let _ = writeln!(out, "architecture: {model_type} {archs}");
    config_lines(&mut out, LlamaConfig::from_hf(&f.config, &f.config_path()));
    let _ = writeln!(out, "tensors:");
    tensor_lines(
        &mut out,
        ckpt.names().into_iter().filter_map(|name| {
            let (ty, shape) = ckpt.file_of(name)?.info(name)?;
            Some((
                name.to_string(),
                ty,
                shape.iter().map(|&d| d as u64).collect(),
            ))
        }),
    );
    let tj = dir.join("tokenizer.json");
    if tj.is_file() {
        match Tokenizer::from_hf(&tj, &f) {
            Ok(t) => tokenizer_line(&mut out, "tokenizer.json", &t),
            Err(e) => {
                let _ = writeln!(out, "tokenizer: unreadable ({e})");
            }
        }
    } else {
        let _ = writeln!(out, "tokenizer: none (tokenizer.json is missing)");
    }
    let g = f.generation_defaults();
    if !g.is_empty() {
        let _ = writeln!(out, "generation defaults: {g:?}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_drop_layer_numbers() {
        assert_eq!(kind("blk.12.attn_q.weight"), "blk.*.attn_q.weight");
        assert_eq!(
            kind("model.layers.0.mlp.up_proj.weight"),
            "model.layers.*.mlp.up_proj.weight"
        );
        assert_eq!(kind("token_embd.weight"), "token_embd.weight");
    }
}
