//! Where a model named on the command line is: a GGUF file, a checkpoint folder, or a
//! Hugging Face hub id found in the local hub cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`,
//! else `~/.cache/huggingface/hub`; the layout `models--ORG--NAME/refs/REV` →
//! `snapshots/COMMIT/`), as `huggingface_hub` lays it out. Downloading is the caller's (only
//! when `HF_HUB_OFFLINE` is not set); this module never touches the network.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The hub settings from the environment (read in the engine's one place for switches).
#[derive(Debug, Clone, Default)]
pub struct HubSettings {
    /// The hub cache folder.
    pub cache: PathBuf,
    /// `HF_HUB_OFFLINE=1`: never download.
    pub offline: bool,
}

impl HubSettings {
    /// `huggingface_hub`'s rules from the variables' values.
    pub fn from_vars(
        hf_hub_cache: Option<&str>,
        hf_home: Option<&str>,
        home: Option<&str>,
        offline: Option<&str>,
    ) -> Self {
        let cache = match (hf_hub_cache, hf_home) {
            (Some(c), _) if !c.is_empty() => PathBuf::from(c),
            (_, Some(h)) if !h.is_empty() => Path::new(h).join("hub"),
            _ => Path::new(home.unwrap_or(".")).join(".cache/huggingface/hub"),
        };
        let offline = offline.is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
        });
        Self { cache, offline }
    }
}

/// What a model argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face checkpoint folder (config.json, safetensors, tokenizer files).
    Folder(PathBuf),
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf(p) | Self::Folder(p) => p,
        }
    }
}

/// Whether `s` reads as a hub id (`NAME` or `ORG/NAME` of letters, digits, `-_.`), not a path.
pub fn looks_like_hub_id(s: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with(['.', '-'])
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let parts: Vec<&str> = s.split('/').collect();
    matches!(parts.len(), 1 | 2) && parts.iter().all(|p| ok(p)) && !s.ends_with(".gguf")
}

/// A local path (a GGUF file or a folder with a config.json), if `arg` is one.
pub fn local(arg: &Path) -> Result<Option<ModelLocation>> {
    if arg.is_file() {
        return Ok(Some(ModelLocation::Gguf(arg.to_path_buf())));
    }
    if arg.is_dir() {
        if arg.join("config.json").is_file() {
            return Ok(Some(ModelLocation::Folder(arg.to_path_buf())));
        }
        return Err(Error::checkpoint(
            arg,
            "a folder without config.json: give a Hugging Face checkpoint folder or a .gguf file",
        ));
    }
    Ok(None)
}

/// The snapshot folder of hub id `id` at `revision` (a branch or tag under `refs/`, or a
/// commit) in the cache, if it is there.
pub fn cached_snapshot(settings: &HubSettings, id: &str, revision: &str) -> Option<PathBuf> {
    let repo = settings
        .cache
        .join(format!("models--{}", id.replace('/', "--")));
    let commit = match std::fs::read_to_string(repo.join("refs").join(revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    // A ref's content is a commit hash: never a path.
    if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') {
        return None;
    }
    let snap = repo.join("snapshots").join(commit);
    snap.join("config.json").is_file().then_some(snap)
}

/// Where `arg` is: a local file or folder, else a hub id in the cache. `None` when it is a
/// hub id that is not cached and downloading is allowed (the caller may download it); an
/// error when it is neither, or when `HF_HUB_OFFLINE` forbids the download.
pub fn locate(
    arg: &str,
    revision: Option<&str>,
    settings: &HubSettings,
) -> Result<Option<ModelLocation>> {
    if let Some(loc) = local(Path::new(arg))? {
        return Ok(Some(loc));
    }
    if !looks_like_hub_id(arg) {
        return Err(Error::ModelNotFound {
            model: arg.to_string(),
            message: "no such file or folder, and not a Hugging Face model id (ORG/NAME)".into(),
        });
    }
    let revision = revision.unwrap_or("main");
    if let Some(snap) = cached_snapshot(settings, arg, revision) {
        return Ok(Some(ModelLocation::Folder(snap)));
    }
    if settings.offline {
        return Err(Error::ModelNotFound {
            model: arg.to_string(),
            message: format!(
                "revision {revision} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set, so it cannot be downloaded",
                settings.cache.display()
            ),
        });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_location_follows_huggingface_hub() {
        let s = HubSettings::from_vars(Some("/c"), Some("/h"), Some("/home/u"), None);
        assert_eq!((s.cache, s.offline), (PathBuf::from("/c"), false));
        let s = HubSettings::from_vars(None, Some("/h"), Some("/home/u"), Some("1"));
        assert_eq!((s.cache, s.offline), (PathBuf::from("/h/hub"), true));
        let s = HubSettings::from_vars(None, None, Some("/home/u"), Some("0"));
        assert_eq!(s.cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!s.offline);
    }

    #[test]
    fn ids_resolve_through_refs_and_snapshots() {
        assert!(looks_like_hub_id("Qwen/Qwen3-0.6B"));
        assert!(looks_like_hub_id("gpt2"));
        assert!(!looks_like_hub_id("./x"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("model.gguf"));
        let root = std::env::temp_dir().join(format!("ferrolm-hub-{}", std::process::id()));
        let repo = root.join("models--Org--Tiny");
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        let s = HubSettings {
            cache: root.clone(),
            offline: true,
        };
        let want = Some(ModelLocation::Folder(snap.clone()));
        assert_eq!(locate("Org/Tiny", None, &s).unwrap(), want);
        assert_eq!(locate("Org/Tiny", Some("abc123"), &s).unwrap(), want);
        let e = locate("Org/Other", None, &s).unwrap_err().to_string();
        assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
        let e = locate("Org/Tiny", Some("v2"), &s).unwrap_err().to_string();
        assert!(e.contains("revision v2"), "{e}");
        let online = HubSettings {
            offline: false,
            ..s
        };
        assert_eq!(locate("Org/Other", None, &online).unwrap(), None);
        std::fs::remove_dir_all(&root).ok();
    }
}
