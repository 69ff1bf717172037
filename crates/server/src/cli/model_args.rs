//! Which model to load, with vLLM's flag names: `MODEL` (or `--model`) a GGUF file, a
//! Hugging Face checkpoint folder or a hub id in the local cache; `--revision`,
//! `--tokenizer`, `--dtype`. Shared by `serve` and `generate`.

use anyhow::Context;
use ferrolm_engine::env::Switches;
use ferrolm_engine::loader::{default_model_path, LoadOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face checkpoint folder, or a hub id (ORG/NAME) in the local
    /// Hugging Face cache. Default: SmolLM2-135M-Instruct Q4_1, fetched if absent.
    #[arg(value_name = "MODEL")]
    pub model: Option<String>,
    /// The same as MODEL (vLLM's flag).
    #[arg(long = "model", value_name = "MODEL", conflicts_with = "model")]
    pub model_flag: Option<String>,
    /// A hub id's branch, tag or commit (default: main).
    #[arg(long)]
    pub revision: Option<String>,
    /// Another checkpoint's tokenizer: a folder or a hub id.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// A checkpoint's weight type: auto (f32 on the CPU; on a GPU the checkpoint's bf16, else
    /// f16), float32, float16 or bfloat16. GGUF weights keep their quantized blocks.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// In-situ quantization of the float linear layers at load: q8_0, q4_0 or q4_k (ggml's
    /// reference quantizers; CPU kernels' layouts, or GGUF blocks for the CUDA kernels on a
    /// GPU, where dummy weights take random blocks; a quantized GGUF keeps its own blocks).
    #[arg(long, short = 'q')]
    pub quantization: Option<ferrolm_engine::quant::InSituType>,
}

impl ModelArgs {
    /// The model argument as given, if any.
    pub fn given(&self) -> Option<&str> {
        self.model_flag.as_deref().or(self.model.as_deref())
    }

    /// What to load on `device`; without a model argument, the default model (fetched the
    /// way `make model` does when the script is at hand).
    pub fn load_options(&self, device: &str, env: &Switches) -> anyhow::Result<LoadOptions> {
        let hub = env.hub.clone();
        let model = match self.given() {
            Some(m) => {
                super::hub_download::ensure_local(
                    m,
                    self.revision.as_deref(),
                    &hub,
                    &env.server.hub_client,
                )?;
                m.to_string()
            }
            None => default_model(&env.model_dir, &env.server.fetch_script)?,
        };
        Ok(LoadOptions {
            model,
            revision: self.revision.clone(),
            tokenizer: self.tokenizer.clone(),
            dtype: self.dtype.clone(),
            device: device.to_string(),
            hub,
            switches: env.model.clone(),
            quantization: self.quantization,
        })
    }
}

fn default_model(model_dir: &std::path::Path, script: &str) -> anyhow::Result<String> {
    let p = default_model_path(model_dir);
    if !p.exists() {
        anyhow::ensure!(
            std::path::Path::new(script).exists(),
            "no model given and the default model is not at {}: run models/fetch-default.sh or pass a model",
            p.display()
        );
        tracing::info!("default model missing; running {script}");
        let status = std::process::Command::new(script)
            .status()
            .context("running the fetch script")?;
        anyhow::ensure!(status.success(), "{script} failed");
    }
    Ok(p.to_string_lossy().into_owned())
}

/// The name clients send by default: a GGUF file's stem, else the argument as given (vLLM
/// serves a checkpoint under its `--model` value).
pub fn default_served_name(model: &str) -> String {
    let p = std::path::Path::new(model);
    if p.is_file() {
        if let Some(stem) = p.file_stem() {
            return stem.to_string_lossy().into_owned();
        }
    }
    model.trim_end_matches('/').to_string()
}
