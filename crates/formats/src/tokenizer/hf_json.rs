//! A tokenizer from a Hugging Face checkpoint: `tokenizer.json` through `tokenizers`, the
//! BOS/EOS tokens and `add_bos_token` from `tokenizer_config.json`, the end-of-generation ids
//! from `generation_config.json` and `config.json`, the chat template from the folder.
//! Byte-level BPE (GPT-2, Llama 3, Qwen, Mistral's newer tokenizers); SentencePiece-style
//! tokenizers come later.

use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;

use super::{gguf_bpe, Tokenizer};
use crate::error::{Error, Result};
use crate::hf::HfFolder;

/// Whether the tokenizer maps bytes to pieces with GPT-2's byte-level table.
fn is_byte_level(tok: &tokenizers::Tokenizer) -> bool {
    let pre = match tok.get_pre_tokenizer() {
        Some(PreTokenizerWrapper::ByteLevel(_)) => true,
        Some(PreTokenizerWrapper::Sequence(s)) => format!("{s:?}").contains("ByteLevel"),
        _ => false,
    };
    pre && matches!(tok.get_decoder(), Some(DecoderWrapper::ByteLevel(_)))
}

impl Tokenizer {
    /// The tokenizer in `tokenizer_json`, with the special tokens and template `folder`'s
    /// files give (`folder` may be another checkpoint's than the weights', `--tokenizer`).
    pub fn from_hf(tokenizer_json: &Path, folder: &HfFolder) -> Result<Self> {
        let mut with_special = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_json.display())))?;
        // A prompt is never cut or padded behind the caller's back (transformers turns both
        // off per call too).
        with_special
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_json.display())))?;
        with_special.with_padding(None);
        if !is_byte_level(&with_special) {
            return Err(Error::Unsupported {
                path: tokenizer_json.to_path_buf(),
                message:
                    "only byte-level BPE tokenizers are read so far (not SentencePiece/Metaspace)"
                        .into(),
            });
        }
        let mut plain = with_special.clone();
        // Special-token text in a prompt stays text unless the caller asks otherwise.
        plain.set_encode_special_tokens(true);

        let vocab = with_special.get_vocab(true);
        let n = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
        let mut pieces = vec![String::new(); n];
        for (piece, &id) in &vocab {
            pieces[id as usize] = piece.clone();
        }
        let added = with_special.get_added_tokens_decoder();
        let table = gguf_bpe::unicode_to_byte_table();
        let token_bytes = pieces
            .iter()
            .enumerate()
            .map(|(id, p)| match added.get(&(id as u32)) {
                Some(t) => t.content.as_bytes().to_vec(),
                None => gguf_bpe::piece_bytes(p, &table),
            })
            .collect();
        let is_control = (0..n)
            .map(|id| added.get(&(id as u32)).is_some_and(|t| t.special))
            .collect();

        let id_of = |key: &str| -> Result<Option<u32>> {
            match folder.special_token(key) {
                None => Ok(None),
                Some(t) => vocab.get(&t).copied().map(Some).ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "tokenizer_config.json's {key} {t:?} is not in {}",
                        tokenizer_json.display()
                    ))
                }),
            }
        };
        let bos_id = id_of("bos_token")?;
        let mut eos_id = id_of("eos_token")?;
        let config_eos = folder.eos_ids();
        if eos_id.is_none() {
            eos_id = config_eos.first().copied();
        }
        // Where tokenizer_config.json does not say, BOS is added when the tokenizer's own
        // post-processor adds it (Llama 3's TemplateProcessing).
        let add_bos = match folder.add_bos_token() {
            Some(b) => b,
            None => {
                let enc = with_special
                    .encode_fast("", true)
                    .map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
                bos_id.is_some() && enc.get_ids().first() == bos_id.as_ref()
            }
        };
        let mut eog_ids: Vec<u32> = eos_id.into_iter().chain(config_eos).collect();
        eog_ids.retain(|&i| (i as usize) < n);
        eog_ids.sort_unstable();
        eog_ids.dedup();
        Ok(Self {
            encoder: super::Encoder::Hf {
                with_special,
                plain,
            },
            token_bytes,
            is_control,
            pieces,
            bos_id,
            eos_id,
            eog_ids,
            add_bos,
            chat_template: folder.chat_template()?,
        })
    }
}
