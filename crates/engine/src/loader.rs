//! Loading a model from disk: GGUF weights, tokenizer and chat template together; and the
//! benches' models (`--load-format dummy` from a config.json, or a GGUF).

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::device::{resolve_device, resolve_dtype};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::model::{LlamaConfig, LlamaModel};
use crate::tokenizer::{ChatTemplate, Tokenizer};

/// File name of the default model, as `models/fetch-default.sh` stores it.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where `models/fetch-default.sh` puts the default model (same rules as the script).
pub fn default_model_path() -> PathBuf {
    crate::env::get().model_dir.join(DEFAULT_MODEL_FILE)
}

/// A model ready to run: weights, tokenizer, chat template.
pub struct LoadedModel {
    pub path: PathBuf,
    pub model: LlamaModel,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
}

impl LoadedModel {
    /// Loads the model on the device named as `--device` takes it (cpu, cuda, auto).
    pub fn load_on(path: impl AsRef<Path>, device: &str) -> Result<Self> {
        Self::load(path, &resolve_device(device)?)
    }

    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(EngineError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        if path.is_dir() {
            return Err(EngineError::Unsupported {
                path: path.to_path_buf(),
                message: "a directory; give the path of a .gguf file".into(),
            });
        }
        let gguf = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let model = LlamaModel::from_gguf(&gguf, device)?;
        if tokenizer.vocab_size() > model.config.vocab_size {
            return Err(EngineError::BadModelFile {
                path: path.to_path_buf(),
                message: format!(
                    "the tokenizer has {} tokens but the model's vocabulary is {}",
                    tokenizer.vocab_size(),
                    model.config.vocab_size
                ),
            });
        }
        let chat_template = match &tokenizer.chat_template {
            Some(src) => Some(ChatTemplate::for_tokenizer(src, &tokenizer)?),
            None => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            model,
            tokenizer,
            chat_template,
        })
    }

    /// Replaces the model's chat template with `--chat-template`'s: a file path or the
    /// template text itself.
    pub fn set_chat_template(&mut self, path_or_text: &str) -> Result<()> {
        let src = std::fs::read_to_string(path_or_text).unwrap_or_else(|_| path_or_text.into());
        self.chat_template = Some(ChatTemplate::for_tokenizer(&src, &self.tokenizer)?);
        Ok(())
    }

    pub fn max_model_len(&self) -> usize {
        self.model.config.max_position_embeddings
    }
}

/// The config.json a dummy model is shaped by: the path itself, or `config.json` in it.
pub fn config_json(model: &Path) -> PathBuf {
    if model.is_dir() {
        model.join("config.json")
    } else {
        model.to_path_buf()
    }
}

/// A model for benchmarks on `device` (a `--device` name): `--load-format dummy` (or a
/// config.json path) gives random weights of that shape; anything else is a GGUF file.
pub fn load_bench_model(
    model: &Path,
    load_format: &str,
    dtype: &str,
    device: &str,
    max_model_len: Option<usize>,
) -> Result<LlamaModel> {
    let device = resolve_device(device)?;
    let is_json = config_json(model).extension().is_some_and(|e| e == "json");
    match load_format {
        "dummy" => {}
        "auto" if is_json => {}
        "auto" | "gguf" => return Ok(LoadedModel::load(model, &device)?.model),
        other => {
            return Err(EngineError::Config(format!(
                "--load-format {other:?}: expected auto, gguf or dummy"
            )))
        }
    }
    let mut cfg = LlamaConfig::from_hf_json(&config_json(model))?;
    if let Some(n) = max_model_len {
        if n == 0 || n > cfg.max_position_embeddings {
            return Err(EngineError::Config(format!(
                "--max-model-len {n} must be between 1 and the model's {}",
                cfg.max_position_embeddings
            )));
        }
        cfg.max_position_embeddings = n;
    }
    let dtype = resolve_dtype(dtype, &device)?;
    let mut model = LlamaModel::dummy(cfg, dtype, &device, 0)?;
    // On a GPU, one matmul for Q/K/V and one for gate/up (8B batch-1 decode 6.75 -> 6.20
    // ms on an H200); FERROLM_STACK_PROJ=0 keeps them split (an A/B).
    if crate::env::get()
        .stack_projections
        .unwrap_or(!device.is_cpu())
    {
        model.stack_projections()?;
    }
    Ok(model)
}
