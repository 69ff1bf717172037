//! Downloading a hub id into the Hugging Face cache when it is not there (and
//! `HF_HUB_OFFLINE` allows it), with a progress bar, as vLLM does: the files a checkpoint
//! needs, through `hf-hub` into the same cache layout the loader then reads. A thin path: no
//! hub is reachable from our test machines.

use anyhow::Context;
use ferrolm_engine::env::HubClient;
use ferrolm_engine::env::HubSettings;
use ferrolm_engine::loader::needs_download;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

/// The files of a checkpoint we read besides its weights.
const CONFIG_FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// The weight files the loader reads: the shards an index names, else `model.safetensors`
/// (Mistral's repositories also hold `consolidated.safetensors`, the same weights again).
fn weight_files(listed: &[&str], index: Option<&serde_json::Value>) -> Vec<String> {
    match index.and_then(|i| i["weight_map"].as_object()) {
        Some(map) => {
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str())
                .filter(|f| !f.contains(['/', '\\']) && !f.starts_with('.'))
                .map(str::to_string)
                .collect();
            shards.sort();
            shards.dedup();
            shards
        }
        None => listed
            .iter()
            .filter(|f| **f == "model.safetensors")
            .map(|f| f.to_string())
            .collect(),
    }
}

/// Makes sure `model` is local: a path, a cached hub id, or downloaded now.
pub fn ensure_local(
    model: &str,
    revision: Option<&str>,
    hub: &HubSettings,
    client: &HubClient,
) -> anyhow::Result<()> {
    if !needs_download(model, revision, hub)? {
        return Ok(());
    }
    let revision = revision.unwrap_or("main");
    tracing::info!(%model, %revision, cache = %hub.cache.display(), "downloading from the Hugging Face hub");
    let mut builder = ApiBuilder::new()
        .with_cache_dir(hub.cache.clone())
        .with_progress(true)
        .with_token(client.token.clone());
    if let Some(endpoint) = &client.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
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
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    anyhow::ensure!(
        listed.contains(&"config.json"),
        "{model}: the hub repository has no config.json (a GGUF repository? give the .gguf file)"
    );
    for f in CONFIG_FILES.iter().filter(|f| listed.contains(f)) {
        repo.get(f)
            .with_context(|| format!("{model}: downloading {f}"))?;
    }
    let index = if listed.contains(&"model.safetensors.index.json") {
        let path = repo
            .get("model.safetensors.index.json")
            .with_context(|| format!("{model}: downloading the weights' index"))?;
        let text = std::fs::read_to_string(&path)?;
        Some(serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?)
    } else {
        None
    };
    let weights = weight_files(&listed, index.as_ref());
    anyhow::ensure!(
        !weights.is_empty(),
        "{model}: no model.safetensors or index in the repository (only safetensors checkpoints are read)"
    );
    for f in &weights {
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
        let listed = ["model.safetensors", "consolidated.safetensors", "README.md"];
        assert_eq!(weight_files(&listed, None), vec!["model.safetensors"]);
        let index = serde_json::json!({"weight_map": {
            "a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
            "c": "model-00001-of-00002.safetensors", "d": "../x.safetensors"}});
        assert_eq!(
            weight_files(&listed, Some(&index)),
            vec![
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
    }
}
