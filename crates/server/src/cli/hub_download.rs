//! Downloading a hub id into the Hugging Face cache when it is not there (and
//! `HF_HUB_OFFLINE` allows it), with a progress bar, as vLLM does: the files a checkpoint
//! needs, through `hf-hub` into the same cache layout the loader then reads. A thin path: no
//! hub is reachable from our test machines.

use anyhow::Context;
use ferrolm_engine::loader::needs_download;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

/// The files of a checkpoint we read (weights, configs, tokenizer, template).
fn wanted(file: &str) -> bool {
    matches!(
        file,
        "config.json"
            | "generation_config.json"
            | "tokenizer.json"
            | "tokenizer_config.json"
            | "special_tokens_map.json"
            | "chat_template.jinja"
            | "model.safetensors.index.json"
    ) || (file.ends_with(".safetensors") && !file.contains('/'))
}

/// Makes sure `model` is local: a path, a cached hub id, or downloaded now.
pub fn ensure_local(model: &str, revision: Option<&str>) -> anyhow::Result<()> {
    if !needs_download(model, revision)? {
        return Ok(());
    }
    let hub = &ferrolm_engine::env::get().hub;
    let revision = revision.unwrap_or("main");
    tracing::info!(%model, %revision, cache = %hub.cache.display(), "downloading from the Hugging Face hub");
    let mut builder = ApiBuilder::new()
        .with_cache_dir(hub.cache.clone())
        .with_progress(true)
        .with_token(super::env::hf_token());
    if let Some(endpoint) = super::env::hf_endpoint() {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().context("the Hugging Face hub client")?;
    let repo = api.repo(Repo::with_revision(
        model.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = repo
        .info()
        .with_context(|| format!("{model}: asking the hub for its files"))?;
    let files: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|f| wanted(f))
        .collect();
    anyhow::ensure!(
        files.contains(&"config.json"),
        "{model}: the hub repository has no config.json (a GGUF repository? give the .gguf file)"
    );
    for f in files {
        repo.get(f)
            .with_context(|| format!("{model}: downloading {f}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_what_the_loader_reads() {
        assert!(wanted("model-00001-of-00004.safetensors") && wanted("tokenizer.json"));
        assert!(!wanted("original/consolidated.safetensors") && !wanted("pytorch_model.bin"));
        assert!(!wanted("README.md"));
    }
}
