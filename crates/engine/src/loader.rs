//! Loading a model from disk: a GGUF file, or a Hugging Face checkpoint (a folder or a hub
//! id in the local cache) with its tokenizer, chat template and generation defaults; and the
//! benches' models (`--load-format dummy` from a config.json, or a GGUF).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use ferrolm_formats::hf::hub::{self, HubSettings, ModelLocation};
use ferrolm_formats::hf::safetensors::Checkpoint;
pub use ferrolm_formats::hf::GenerationDefaults;
use ferrolm_formats::hf::HfFolder;

use crate::device::{resolve_device, resolve_dtype};
use crate::env::{ModelSwitches, Switches};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::model::{LlamaConfig, LlamaModel};
use crate::quant::InSituType;
use crate::tokenizer::{ChatTemplate, Tokenizer};

pub use ferrolm_formats::model_dir::DEFAULT_MODEL_FILE;

/// Where `models/fetch-default.sh` puts the default model in `model_dir` (same rules as the
/// script: `env::Switches::model_dir`).
pub fn default_model_path(model_dir: &Path) -> PathBuf {
    model_dir.join(DEFAULT_MODEL_FILE)
}

/// What to load, as the command line names it (vLLM's `--model`, `--revision`,
/// `--tokenizer`, `--dtype`, `--device`).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A GGUF file, a checkpoint folder, or a hub id (`ORG/NAME`).
    pub model: String,
    pub revision: Option<String>,
    /// Another checkpoint's tokenizer (a folder or hub id).
    pub tokenizer: Option<String>,
    /// auto, float32, float16, bfloat16 (a checkpoint's weights; GGUF keeps its blocks).
    pub dtype: String,
    /// cpu, cuda, auto.
    pub device: String,
    /// Where hub ids are found (the caller reads HF_HUB_CACHE etc., `env::Switches::hub`).
    pub hub: HubSettings,
    /// How the model runs (the caller reads them, `env::Switches::model`).
    pub switches: ModelSwitches,
    /// In-situ quantization of the float linear layers (`--quantization`).
    pub quantization: Option<InSituType>,
}

impl LoadOptions {
    /// `model` on the CPU, with the hub and switches of `switches`.
    pub fn new(model: impl Into<String>, switches: &Switches) -> Self {
        Self {
            model: model.into(),
            revision: None,
            tokenizer: None,
            dtype: "auto".into(),
            device: "cpu".into(),
            hub: switches.hub.clone(),
            switches: switches.model.clone(),
            quantization: None,
        }
    }
}

/// A model ready to run: weights, tokenizer, chat template.
pub struct LoadedModel {
    pub path: PathBuf,
    pub model: LlamaModel,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// `generation_config.json`'s sampling defaults (none for a GGUF).
    pub generation_defaults: GenerationDefaults,
}

/// Where a model argument is: a local GGUF or folder, or a cached hub snapshot.
pub fn locate(model: &str, revision: Option<&str>, hub: &HubSettings) -> Result<ModelLocation> {
    match hub::locate(model, revision, hub)? {
        Some(loc) => Ok(loc),
        // Not cached (the server's command line downloads it first, where a hub is reachable).
        None => Err(EngineError::ModelNotFound {
            model: model.to_string(),
            message: format!(
                "not in the Hugging Face cache at {}; `ferrolm serve {model}` downloads it, or give a local folder or .gguf file",
                hub.cache.display()
            ),
        }),
    }
}

/// Whether `model` is a hub id that is not in the cache and may be downloaded (neither a
/// local path nor cached; `HF_HUB_OFFLINE` unset). An error where it is nowhere and may not be.
pub fn needs_download(model: &str, revision: Option<&str>, hub: &HubSettings) -> Result<bool> {
    Ok(hub::locate(model, revision, hub)?.is_none())
}

/// A checkpoint's weights type: `--dtype`, or with `auto` f32 on the CPU and on a GPU the
/// checkpoint's own half type (f16 for an f32 checkpoint, as vLLM does).
fn checkpoint_dtype(name: &str, folder: &HfFolder, device: &Device) -> Result<DType> {
    if name != "auto" {
        return resolve_dtype(name, device);
    }
    if device.is_cpu() {
        return Ok(DType::F32);
    }
    let stored = folder.config["torch_dtype"]
        .as_str()
        .or(folder.config["dtype"].as_str());
    Ok(match stored {
        Some("bfloat16") => DType::BF16,
        _ => DType::F16,
    })
}

impl LoadedModel {
    /// Loads what `opts` names: a GGUF file, a checkpoint folder or a cached hub id.
    pub fn load_with(opts: &LoadOptions) -> Result<Self> {
        let mut lm = Self::load_unquantized(opts)?;
        lm.model.set_switches(&opts.switches);
        if let Some(ty) = opts.quantization {
            lm.model.quantize_in_situ(ty)?;
        }
        Ok(lm)
    }

    fn load_unquantized(opts: &LoadOptions) -> Result<Self> {
        let device = resolve_device(&opts.device, opts.switches.pool_keep)?;
        match locate(&opts.model, opts.revision.as_deref(), &opts.hub)? {
            ModelLocation::Gguf(path) => {
                if opts.tokenizer.is_some() {
                    return Err(EngineError::Config(
                        "--tokenizer with a GGUF model: its tokenizer is in the file".into(),
                    ));
                }
                Self::load(path, &device)
            }
            ModelLocation::Folder(dir) => Self::load_checkpoint(&dir, opts, &device),
        }
    }

    /// Loads the GGUF model on the device named as `--device` takes it (cpu, cuda, auto),
    /// with `switches`.
    pub fn load_on(path: impl AsRef<Path>, device: &str, switches: &Switches) -> Result<Self> {
        let mut opts = LoadOptions::new(path.as_ref().to_string_lossy(), switches);
        opts.device = device.to_string();
        Self::load_with(&opts)
    }

    /// A Hugging Face checkpoint folder: config, safetensors, tokenizer (`--tokenizer`'s, or
    /// the folder's), chat template and generation defaults.
    fn load_checkpoint(dir: &Path, opts: &LoadOptions, device: &Device) -> Result<Self> {
        let folder = HfFolder::open(dir)?;
        let config = LlamaConfig::from_hf(&folder.config, &folder.config_path())?;
        let tok_folder = match &opts.tokenizer {
            None => None,
            Some(t) => match locate(t, None, &opts.hub)? {
                ModelLocation::Folder(d) => Some(HfFolder::open(&d)?),
                ModelLocation::Gguf(p) => {
                    return Err(EngineError::Config(format!(
                        "--tokenizer {}: give a checkpoint folder or hub id with a tokenizer.json",
                        p.display()
                    )))
                }
            },
        };
        let tf = tok_folder.as_ref().unwrap_or(&folder);
        let tokenizer_json = tf.dir.join("tokenizer.json");
        if !tokenizer_json.is_file() {
            return Err(EngineError::BadModelFile {
                path: tokenizer_json,
                message: "tokenizer.json is missing (give --tokenizer)".into(),
            });
        }
        let tokenizer = Tokenizer::from_hf(&tokenizer_json, tf)?;
        let dtype = checkpoint_dtype(&opts.dtype, &folder, device)?;
        let ckpt = Checkpoint::open_dir(dir)?;
        let model = LlamaModel::from_safetensors(&ckpt, dir, config, dtype, device)?;
        // The template sees the special tokens tokenizer_config.json sets, as in transformers.
        let specials = tf.special_tokens();
        let chat_template = match &tokenizer.chat_template {
            Some(src) => Some(ChatTemplate::with_special_tokens(
                src,
                specials.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )?),
            None => None,
        };
        Self::assemble(
            dir,
            model,
            tokenizer,
            chat_template,
            folder.generation_defaults(),
        )
    }

    /// A GGUF file: weights, tokenizer and chat template from its metadata.
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
        let chat_template = match &tokenizer.chat_template {
            Some(src) => Some(ChatTemplate::for_tokenizer(src, &tokenizer)?),
            None => None,
        };
        Self::assemble(
            path,
            model,
            tokenizer,
            chat_template,
            GenerationDefaults::default(),
        )
    }

    /// The model with its tokenizer and chat template, checked to fit together.
    fn assemble(
        path: &Path,
        model: LlamaModel,
        tokenizer: Tokenizer,
        chat_template: Option<ChatTemplate>,
        generation_defaults: GenerationDefaults,
    ) -> Result<Self> {
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
        Ok(Self {
            path: path.to_path_buf(),
            model,
            tokenizer,
            chat_template,
            generation_defaults,
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
    quantization: Option<InSituType>,
    switches: &ModelSwitches,
) -> Result<LlamaModel> {
    let mut model =
        load_bench_model_unquantized(model, load_format, dtype, device, max_model_len, switches)?;
    model.set_switches(switches);
    if let Some(ty) = quantization {
        // Dummy weights on a GPU take random blocks (an 8B shape in seconds, not minutes of
        // quantizing random floats); the CPU quantizes its dummy floats as before.
        let source = match (load_format, model.device().is_cpu()) {
            ("dummy", false) => crate::model::InSituSource::Random { seed: 0 },
            _ => crate::model::InSituSource::Weights,
        };
        model.quantize_in_situ_from(ty, source)?;
    }
    Ok(model)
}

fn load_bench_model_unquantized(
    model: &Path,
    load_format: &str,
    dtype: &str,
    device: &str,
    max_model_len: Option<usize>,
    switches: &ModelSwitches,
) -> Result<LlamaModel> {
    let device = resolve_device(device, switches.pool_keep)?;
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
    if switches.stack_projections.unwrap_or(!device.is_cpu()) {
        model.stack_projections()?;
    }
    Ok(model)
}
