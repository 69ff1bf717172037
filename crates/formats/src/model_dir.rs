//! Where ferrolm keeps the models its scripts fetch (`models/fetch-default.sh`,
//! `models/fetch-gemma3.sh` use the same rules), from the variables' values: the engine's
//! switches read them once; tests of this crate use the same function.

use std::path::PathBuf;

/// File name of the default model, as `models/fetch-default.sh` stores it.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `FERROLM_MODEL_DIR`, else `$XDG_CACHE_HOME/ferrolm/models`, else
/// `$HOME/.cache/ferrolm/models` (empty values count as unset).
pub fn model_dir_from_vars(
    ferrolm_model_dir: Option<&str>,
    xdg_cache_home: Option<&str>,
    home: Option<&str>,
) -> PathBuf {
    let set = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(ferrolm_model_dir)
        .or_else(|| set(xdg_cache_home).map(|c| c.join("ferrolm/models")))
        .unwrap_or_else(|| {
            set(home)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".cache/ferrolm/models")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        assert_eq!(
            model_dir_from_vars(Some("/m"), Some("/x"), Some("/h")),
            PathBuf::from("/m")
        );
        assert_eq!(
            model_dir_from_vars(Some(""), Some("/x"), Some("/h")),
            PathBuf::from("/x/ferrolm/models")
        );
        assert_eq!(
            model_dir_from_vars(None, None, Some("/h")),
            PathBuf::from("/h/.cache/ferrolm/models")
        );
        assert_eq!(
            model_dir_from_vars(None, None, None),
            PathBuf::from("./.cache/ferrolm/models")
        );
    }
}
