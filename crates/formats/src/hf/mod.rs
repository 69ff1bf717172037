//! Hugging Face checkpoints: a folder's JSON files (`config.json`, `generation_config.json`,
//! `tokenizer_config.json`, `chat_template.jinja`), its safetensors weights, and finding a
//! model named on the command line (a path or a hub id in the local cache).

pub mod hub;
pub mod safetensors;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// The special tokens transformers' `special_tokens_map` holds, which it passes to the
/// template where the tokenizer has them.
pub const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A checkpoint folder's JSON files, read and parsed (the weights are opened separately).
pub struct HfFolder {
    pub dir: PathBuf,
    pub config: Value,
    pub generation_config: Option<Value>,
    pub tokenizer_config: Option<Value>,
}

/// `generation_config.json`'s sampling defaults, applied where a request leaves a field out
/// (vLLM's `--generation-config auto`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_tokens: Option<usize>,
}

impl GenerationDefaults {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A JSON file: `None` when absent, an error when unreadable or not JSON.
pub fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::checkpoint(path, format!("not JSON: {e}")))
}

/// Token ids from a JSON int or list of ints (`eos_token_id`).
fn ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|i| vec![i as u32]).unwrap_or_default(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|i| i as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl HfFolder {
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?
            .ok_or_else(|| Error::checkpoint(&config_path, "config.json is missing"))?;
        if !config.is_object() {
            return Err(Error::checkpoint(&config_path, "not a JSON object"));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            generation_config: read_json(&dir.join("generation_config.json"))?,
            tokenizer_config: read_json(&dir.join("tokenizer_config.json"))?,
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// The chat template: `chat_template.jinja`, else `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list of named templates: the one named "default").
    pub fn chat_template(&self) -> Result<Option<String>> {
        let file = self.dir.join("chat_template.jinja");
        match std::fs::read_to_string(&file) {
            Ok(t) => return Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { path: file, source }),
        }
        let Some(tc) = &self.tokenizer_config else {
            return Ok(None);
        };
        Ok(match &tc["chat_template"] {
            Value::String(s) => Some(s.clone()),
            Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        })
    }

    /// The ids that end a generation by the config files: `eos_token_id` of
    /// `generation_config.json` and of `config.json` (each an id or a list).
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut v = ids(&self.config["eos_token_id"]);
        if let Some(g) = &self.generation_config {
            v.extend(ids(&g["eos_token_id"]));
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// `generation_config.json`'s sampling fields (vLLM reads the same ones).
    pub fn generation_defaults(&self) -> GenerationDefaults {
        let Some(g) = &self.generation_config else {
            return GenerationDefaults::default();
        };
        let f = |k: &str| g[k].as_f64().map(|v| v as f32);
        GenerationDefaults {
            temperature: f("temperature"),
            top_p: f("top_p"),
            top_k: g["top_k"].as_i64(),
            min_p: f("min_p"),
            repetition_penalty: f("repetition_penalty"),
            max_tokens: g["max_new_tokens"].as_u64().map(|v| v as usize),
        }
    }

    /// A special token named in `tokenizer_config.json` (`bos_token`, `eos_token`): a string
    /// or an object with `content`.
    pub fn special_token(&self, key: &str) -> Option<String> {
        let v = &self.tokenizer_config.as_ref()?[key];
        v.as_str()
            .or_else(|| v["content"].as_str())
            .map(str::to_string)
    }

    /// The special tokens `tokenizer_config.json` sets (name, text), as transformers'
    /// `special_tokens_map` passes them to the chat template (`bos_token`, `eos_token`,
    /// `unk_token`, `pad_token`, ...; a null one is left out).
    pub fn special_tokens(&self) -> Vec<(String, String)> {
        SPECIAL_TOKEN_NAMES
            .iter()
            .filter_map(|k| Some((k.to_string(), self.special_token(k)?)))
            .collect()
    }

    /// `tokenizer_config.json`'s `add_bos_token`, when it says.
    pub fn add_bos_token(&self) -> Option<bool> {
        self.tokenizer_config.as_ref()?["add_bos_token"].as_bool()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_templates_eos_ids_and_generation_defaults() {
        let dir = std::env::temp_dir().join(format!("ferrolm-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"eos_token_id": 2}"#).unwrap();
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"eos_token_id": [2, 7], "temperature": 0.6, "top_k": 20, "max_new_tokens": 64}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
                "bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": true}"#,
        )
        .unwrap();
        let f = HfFolder::open(&dir).unwrap();
        assert_eq!(f.eos_ids(), vec![2, 7]);
        assert_eq!(f.chat_template().unwrap().as_deref(), Some("D"));
        assert_eq!(f.special_token("bos_token").as_deref(), Some("<s>"));
        assert_eq!(f.special_token("eos_token").as_deref(), Some("</s>"));
        assert_eq!(f.add_bos_token(), Some(true));
        let g = f.generation_defaults();
        assert_eq!(
            (g.temperature, g.top_k, g.top_p, g.max_tokens),
            (Some(0.6), Some(20), None, Some(64))
        );
        std::fs::write(dir.join("chat_template.jinja"), "J").unwrap();
        assert_eq!(f.chat_template().unwrap().as_deref(), Some("J"));
        std::fs::write(dir.join("config.json"), "[").unwrap();
        assert!(HfFolder::open(&dir)
            .err()
            .unwrap()
            .to_string()
            .contains("not JSON"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
