//! Building a Hugging Face `tokenizers` BPE tokenizer from GGUF `tokenizer.ggml.*` metadata,
//! the way llama.cpp reads the same metadata (gpt2-style byte-level BPE).

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};

/// GGUF token types (llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
    pub const BYTE: i64 = 6;
}

/// llama.cpp's pre-tokenizer regexes for the `tokenizer.ggml.pre` names we know, as the
/// Hugging Face pre-tokenizer that produces the same splits.
pub fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level_with_regex =
        || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let split_then_bytes = |pattern: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
        ])))
    };
    match pre {
        // SmolLM: every digit its own token, then GPT-2's byte-level regex.
        "smollm" => Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level_with_regex(),
        ]))),
        "default" | "gpt-2" | "gpt2" => Ok(byte_level_with_regex()),
        "llama-bpe" | "llama3" | "smaug-bpe" => split_then_bytes(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        "qwen2" | "deepseek-r1-qwen" => split_then_bytes(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        other => Err(Error::Tokenizer(format!(
            "pre-tokenizer {other:?} (tokenizer.ggml.pre) is not supported yet; known: smollm, gpt2, default, llama-bpe, qwen2"
        ))),
    }
}

/// The pieces of a GGUF vocabulary we need to build tokenizers.
pub struct GgufVocab {
    pub tokens: Vec<String>,
    pub token_types: Vec<i64>,
    pub merges: Vec<(String, String)>,
    pub pre: String,
}

/// Builds two tokenizers over the same vocabulary: one that recognises special (control and
/// user-defined) tokens in the text, one that treats their text as ordinary text.
pub fn build(vocab: &GgufVocab) -> Result<(tokenizers::Tokenizer, tokenizers::Tokenizer)> {
    let map: Vocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let make = |with_special: bool| -> Result<tokenizers::Tokenizer> {
        let bpe = BPE::builder()
            .vocab_and_merges(map.clone(), vocab.merges.clone())
            .build()
            .map_err(|e| Error::Tokenizer(format!("BPE from GGUF: {e}")))?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(pre_tokenizer_for(&vocab.pre)?));
        tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        // As llama.cpp: user-defined tokens are always matched in the text; control tokens
        // only when special tokens are parsed.
        let added: Vec<AddedToken> = vocab
            .tokens
            .iter()
            .zip(&vocab.token_types)
            .filter(|(_, &ty)| {
                ty == token_type::USER_DEFINED || (with_special && ty == token_type::CONTROL)
            })
            .map(|(t, &ty)| AddedToken::from(t.clone(), ty == token_type::CONTROL))
            .collect();
        if !added.is_empty() {
            tok.add_special_tokens(added)
                .map_err(|e| Error::Tokenizer(format!("special tokens: {e}")))?;
        }
        Ok(tok)
    };
    Ok((make(true)?, make(false)?))
}

/// GPT-2's byte <-> printable-unicode table: byte-level BPE pieces spell bytes with it.
pub fn unicode_to_byte_table() -> std::collections::HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b as u8)))
        .collect()
}

/// The bytes a byte-level piece stands for. Characters outside the table (which a
/// well-formed vocabulary does not have) are kept as their UTF-8.
pub fn piece_bytes(piece: &str, table: &std::collections::HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(piece.len());
    for c in piece.chars() {
        match table.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}
