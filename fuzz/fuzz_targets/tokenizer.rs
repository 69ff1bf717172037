//! The default model's tokenizer on arbitrary input: any UTF-8 text encodes (and decodes
//! back to itself when special tokens are not parsed, less the bytes the vocabulary has no
//! piece for, which are dropped as llama.cpp drops them), any ids decode, and the
//! incremental decoder's deltas add up to the whole decode. The model file: $FERROLM_FUZZ_MODEL, else
//! the default model in $FERROLM_MODEL_DIR or ~/.cache/ferrolm/models
//! (models/fetch-default.sh; scripts/fuzz.sh fetches it).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use ferrolm_formats::gguf::GgufFile;
use ferrolm_formats::tokenizer::{IncrementalDecoder, Tokenizer};
use libfuzzer_sys::fuzz_target;

const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// As the engine's `loader::default_model_path` finds it.
fn model_path() -> PathBuf {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("FERROLM_FUZZ_MODEL") {
        return p;
    }
    let dir = var("FERROLM_MODEL_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("ferrolm/models")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/ferrolm/models")))
        .unwrap_or_else(|| PathBuf::from("./.cache/ferrolm/models"));
    dir.join(DEFAULT_MODEL_FILE)
}

/// The tokenizer, and which bytes have a piece of their own in its vocabulary.
fn tokenizer() -> &'static (Tokenizer, [bool; 256]) {
    static TOKENIZER: OnceLock<(Tokenizer, [bool; 256])> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = model_path();
        let tok = match GgufFile::open(&path).and_then(|f| Tokenizer::from_gguf(&f)) {
            Ok(t) => t,
            Err(e) => panic!("the tokenizer target needs the default model: {e}"),
        };
        let mut has_piece = [false; 256];
        for id in 0..tok.vocab_size() as u32 {
            if let [b] = tok.token_bytes(id) {
                has_piece[usize::from(*b)] = true;
            }
        }
        (tok, has_piece)
    })
}

fuzz_target!(|data: &[u8]| {
    let (tok, has_piece) = tokenizer();
    let vocab = tok.vocab_size() as u32;
    if let Ok(text) = std::str::from_utf8(data) {
        for special in [false, true] {
            let ids = match tok.encode(text, special) {
                Ok(ids) => ids,
                Err(e) => panic!("encoding {text:?} (special {special}) failed: {e}"),
            };
            assert!(
                ids.iter().all(|&id| id < vocab),
                "an id past the vocabulary"
            );
            let bos = usize::from(tok.add_bos && tok.bos_id.is_some());
            if !special {
                let kept: Vec<u8> = text
                    .bytes()
                    .filter(|&b| has_piece[usize::from(b)])
                    .collect();
                let want = String::from_utf8_lossy(&kept);
                assert_eq!(tok.decode(&ids[bos..], false), want, "round trip");
            }
        }
    }
    // The bytes as ids, mostly inside the vocabulary, some past it.
    let ids: Vec<u32> = data
        .chunks(2)
        .map(|c| c.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)) % (vocab + 64))
        .collect();
    for skip_special in [false, true] {
        let whole = tok.decode(&ids, skip_special);
        let mut decoder = IncrementalDecoder::new(skip_special);
        let mut joined: String = ids.iter().map(|&id| decoder.push(tok, id)).collect();
        joined.push_str(&decoder.finish());
        assert_eq!(joined, whole, "incremental and whole decodes differ");
    }
});
