//! The tokenizer on the default model's vocabulary (`make test` fetches the model).

use std::path::PathBuf;

use ferrolm_formats::gguf::GgufFile;
use ferrolm_formats::model_dir::{model_dir_from_vars, DEFAULT_MODEL_FILE};
use ferrolm_formats::tokenizer::Tokenizer;

/// `FERROLM_TEST_MODEL`, else the default model where models/fetch-default.sh puts it (the
/// engine's rules: [`model_dir_from_vars`]).
fn model_path() -> PathBuf {
    let var = |k| std::env::var(k).ok().filter(|v| !v.is_empty());
    let path = var("FERROLM_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            model_dir_from_vars(
                var("FERROLM_MODEL_DIR").as_deref(),
                var("XDG_CACHE_HOME").as_deref(),
                var("HOME").as_deref(),
            )
            .join(DEFAULT_MODEL_FILE)
        });
    assert!(
        path.is_file(),
        "the default model is missing at {}: run models/fetch-default.sh (make test does)",
        path.display()
    );
    path
}

/// Found by fuzz/tokenizer (crash-e1fb2702): SmolLM2's vocabulary has no piece for a few
/// control bytes (0x04 0x06 0x13 0x14 0x16 0x1d), so encoding drops them, as llama.cpp and
/// Hugging Face's tokenizer do with this vocabulary; every other byte round-trips.
#[test]
fn bytes_without_a_piece_are_dropped_and_the_rest_round_trips() {
    let gguf = GgufFile::open(model_path()).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let ids = tok
        .encode("a\u{4}b\u{6}c\u{13}\u{14}\u{16}\u{1d}d", false)
        .unwrap();
    assert_eq!(tok.decode(&ids, false), "abcd");
    let text = "<|im_start|>user\nWhat's up? naïve 日本 👨‍👩‍👧 \t\r\n\u{7}\u{1b}[0m 123";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&ids, false), text);
}
