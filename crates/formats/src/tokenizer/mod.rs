//! Tokenizer (from GGUF metadata or a Hugging Face tokenizer.json), incremental
//! detokenization and chat templates.

mod chat_template;
mod detokenizer;
pub mod gguf_bpe;
mod hf_json;
mod pyjson;
mod spm;
mod template_bounds;

pub use chat_template::{ChatMessage, ChatTemplate, RenderLimits, SPECIAL_TOKEN_NAMES};
pub use detokenizer::IncrementalDecoder;

use crate::error::{Error, GgufError, Result};
use crate::gguf::GgufFile;
use gguf_bpe::token_type;

/// A model's tokenizer: text <-> token ids, plus what the engine needs to know about
/// special tokens (BOS, EOS, the other end-of-generation ids).
pub struct Tokenizer {
    encoder: Encoder,
    /// The bytes each token stands for (special tokens: their text).
    token_bytes: Vec<Vec<u8>>,
    /// Control tokens (skipped when decoding with `skip_special`).
    is_control: Vec<bool>,
    pieces: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Every id that ends a generation (EOS, EOT, ...), as llama.cpp counts them.
    pub eog_ids: Vec<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// What turns text into ids.
enum Encoder {
    /// Hugging Face `tokenizers` (byte-level BPE from GGUF metadata or a tokenizer.json):
    /// `with_special` makes special-token text (`<|im_start|>`) the token, `plain` keeps it
    /// text.
    Hf {
        with_special: tokenizers::Tokenizer,
        plain: tokenizers::Tokenizer,
    },
    /// A SentencePiece vocabulary, encoded as llama.cpp does.
    Spm(spm::SpmVocab),
}

impl Tokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let bad = |key: &str, message: String| {
            gguf.error(GgufError::BadMeta {
                key: key.into(),
                message,
            })
        };
        let model = gguf.meta_str("tokenizer.ggml.model")?;
        if !matches!(model, "gpt2" | "llama") {
            return Err(Error::Unsupported {
                path: gguf.path().to_path_buf(),
                message: format!(
                    "tokenizer.ggml.model {model:?}: byte-level BPE (gpt2) and SentencePiece (llama) are supported"
                ),
            });
        }
        let spm = model == "llama";
        let strings = |key: &str| -> Result<Vec<String>> {
            gguf.meta_array(key)?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(key, "holds a non-string".into()))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let token_types: Vec<i64> = match gguf.meta("tokenizer.ggml.token_type") {
            Some(_) => {
                let key = "tokenizer.ggml.token_type";
                let arr = gguf.meta_array(key)?;
                if arr.len() != n {
                    return Err(bad(key, format!("{} entries for {n} tokens", arr.len())));
                }
                arr.iter()
                    .map(|v| v.as_i64().unwrap_or(token_type::NORMAL))
                    .collect()
            }
            None => vec![token_type::NORMAL; n],
        };
        let (encoder, token_bytes) = if spm {
            let scores: Vec<f32> = match gguf.meta("tokenizer.ggml.scores") {
                None => vec![0.0; n],
                Some(_) => {
                    let key = "tokenizer.ggml.scores";
                    let arr = gguf.meta_array(key)?;
                    if arr.len() != n {
                        return Err(bad(key, format!("{} entries for {n} tokens", arr.len())));
                    }
                    arr.iter()
                        .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                        .collect()
                }
            };
            // llama.cpp's default for SentencePiece vocabularies is a leading space.
            let add_space_prefix = gguf
                .meta("tokenizer.ggml.add_space_prefix")
                .and_then(|v| v.as_bool())
                .unwrap_or(true);
            let vocab = spm::SpmVocab::new(tokens.clone(), scores, &token_types, add_space_prefix);
            let bytes = (0..n)
                .map(|i| vocab.token_bytes(i, token_types[i]))
                .collect();
            (Encoder::Spm(vocab), bytes)
        } else {
            let merges = strings("tokenizer.ggml.merges")?
                .into_iter()
                .map(|m| {
                    m.split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .ok_or_else(|| {
                            bad("tokenizer.ggml.merges", format!("merge {m:?} has no space"))
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            let pre = gguf
                .meta("tokenizer.ggml.pre")
                .and_then(|v| v.as_str())
                .unwrap_or("default")
                .to_string();
            let vocab = gguf_bpe::GgufVocab {
                tokens: tokens.clone(),
                token_types: token_types.clone(),
                merges,
                pre,
            };
            let (with_special, plain) = gguf_bpe::build(&vocab)?;
            let table = gguf_bpe::unicode_to_byte_table();
            let special_ty = |ty: i64| ty == token_type::CONTROL || ty == token_type::USER_DEFINED;
            let bytes = tokens
                .iter()
                .zip(&token_types)
                .map(|(t, &ty)| {
                    if special_ty(ty) {
                        t.as_bytes().to_vec()
                    } else {
                        gguf_bpe::piece_bytes(t, &table)
                    }
                })
                .collect();
            (
                Encoder::Hf {
                    with_special,
                    plain,
                },
                bytes,
            )
        };
        let is_control = token_types
            .iter()
            .map(|&ty| ty == token_type::CONTROL)
            .collect();

        let id = |key: &str| -> Result<Option<u32>> {
            match gguf.meta(key) {
                None => Ok(None),
                Some(v) => {
                    let id = v
                        .as_u64()
                        .filter(|&i| (i as usize) < n)
                        .ok_or_else(|| bad(key, format!("not a token id below {n}")))?;
                    Ok(Some(id as u32))
                }
            }
        };
        let bos_id = id("tokenizer.ggml.bos_token_id")?;
        let eos_id = id("tokenizer.ggml.eos_token_id")?;
        let eot_id = id("tokenizer.ggml.eot_token_id")?;
        let eom_id = id("tokenizer.ggml.eom_token_id")?;
        let add_bos = gguf
            .meta("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let chat_template = gguf
            .meta("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);

        // llama.cpp's end-of-generation set: EOS/EOT/EOM, the fill-in-the-middle pad,
        // repo and file-separator tokens, and tokens whose text marks an end of turn.
        let mut eog_ids: Vec<u32> = [eos_id, eot_id, eom_id].into_iter().flatten().collect();
        let first_of = |names: &[&str]| -> Option<u32> {
            tokens
                .iter()
                .position(|t| names.contains(&t.as_str()))
                .map(|i| i as u32)
        };
        let fim = [
            first_of(&["<|fim_pad|>", "<fim-pad>", "<PAD>"]),
            first_of(&[
                "<|fim_repo|>",
                "<|repo_name|>",
                "<fim-repo>",
                "<REPO>",
                "<reponame>",
            ]),
            first_of(&["<|file_sep|>"]),
        ];
        eog_ids.extend(fim.into_iter().flatten());
        for (i, t) in tokens.iter().enumerate() {
            if matches!(
                t.as_str(),
                "<|eot_id|>"
                    | "<|im_end|>"
                    | "<|end|>"
                    | "<|return|>"
                    | "<|call|>"
                    | "<end_of_turn>"
                    | "<|endoftext|>"
                    | "<|eom_id|>"
                    | "<EOT>"
                    | "_<EOT>"
                    | "<|end_of_text|>"
                    | "<end_of_utterance>"
                    | "<|flush|>"
                    | "<|calls|>"
                    | "</s>"
                    | "[EOT]"
                    | "[EOS]"
                    | "<eos>"
                    | "<turn|>"
                    | "<|tool_response>"
                    | "<｜end▁of▁sentence｜>"
                    | "[e~["
            ) {
                eog_ids.push(i as u32);
            }
        }
        // llama.cpp's two exceptions: with both <|return|> and <|call|> (or <|calls|> and
        // <|flush|>) <|end|> is no end; beside <|tool_response>, </s> is a normal token.
        let has = |name: &str| tokens.iter().any(|t| t == name);
        let drop = |ids: &mut Vec<u32>, name: &str| {
            if let Some(i) = tokens.iter().position(|t| t == name) {
                ids.retain(|&x| x != i as u32);
            }
        };
        if (has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>")) {
            drop(&mut eog_ids, "<|end|>");
        }
        if has("<|tool_response>") {
            drop(&mut eog_ids, "</s>");
        }
        eog_ids.sort_unstable();
        eog_ids.dedup();

        Ok(Self {
            encoder,
            token_bytes,
            is_control,
            pieces: tokens,
            bos_id,
            eos_id,
            eog_ids,
            add_bos,
            chat_template,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The fewest tokens `bytes` bytes of text can encode to: no token stands for more bytes
    /// than the longest in the vocabulary. Lets a server refuse a prompt that cannot fit
    /// before spending time and memory on encoding it.
    pub fn min_tokens_for_bytes(&self, bytes: usize) -> usize {
        let longest = self.token_bytes.iter().map(Vec::len).max().unwrap_or(1);
        bytes.div_ceil(longest.max(1))
    }

    /// Token ids of `text`. `parse_special`: whether special-token text (`<|im_start|>`)
    /// becomes the special token, as chat prompts need, or stays ordinary text. BOS is
    /// prepended when the model asks for it.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let enc: Vec<u32> = match &self.encoder {
            Encoder::Hf {
                with_special,
                plain,
            } => {
                let tok = if parse_special { with_special } else { plain };
                tok.encode_fast(text, false)
                    .map_err(|e| Error::Tokenizer(format!("encode: {e}")))?
                    .get_ids()
                    .to_vec()
            }
            Encoder::Spm(v) => v.encode(text, parse_special),
        };
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            // A rendered chat prompt may carry its BOS already (Llama 3's `bos_token`): one
            // BOS, as vLLM's chat path gives, not two.
            if !(parse_special && enc.first() == Some(&bos)) {
                ids.push(bos);
            }
        }
        ids.extend_from_slice(&enc);
        Ok(ids)
    }

    /// The raw bytes of one token (special tokens: their text). Unknown ids give nothing.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The vocabulary's piece for an id, as the GGUF spells it.
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    pub fn id_of(&self, piece: &str) -> Option<u32> {
        self.pieces
            .iter()
            .position(|p| p == piece)
            .map(|i| i as u32)
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.is_control.get(id as usize).copied().unwrap_or(false)
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog_ids.binary_search(&id).is_ok()
    }

    /// Text of a whole sequence; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if skip_special && self.is_control(id) {
                continue;
            }
            bytes.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests;
