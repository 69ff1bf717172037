//! The model's tokenizer as llguidance sees it: every token's bytes (control tokens marked
//! as special, so no grammar's text can produce them) in a token trie, the
//! end-of-generation ids as its EOS set, and our own encoder for the text a grammar forces.

use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::tokenizer::Tokenizer;

struct ModelTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for ModelTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        let text = String::from_utf8_lossy(s);
        let mut ids = self.tokenizer.encode(&text, false).unwrap_or_default();
        // The encoder prepends BOS for prompts; a grammar's text is a continuation.
        if self.tokenizer.add_bos && ids.first().copied() == self.tokenizer.bos_id {
            ids.remove(0);
        }
        ids
    }
}

/// The trie over `tokenizer`'s vocabulary, `vocab_size` wide (the model's logits row; ids
/// past the tokenizer's vocabulary are empty tokens, never allowed).
pub(crate) fn tok_env(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> TokEnv {
    let n = vocab_size.max(tokenizer.vocab_size());
    let words: Vec<Vec<u8>> = (0..n as u32)
        .map(|id| {
            let bytes = tokenizer.token_bytes(id);
            if tokenizer.is_control(id) || tokenizer.is_eog(id) {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(bytes);
                w
            } else {
                bytes.to_vec()
            }
        })
        .collect();
    let eos = tokenizer
        .eos_id
        .or_else(|| tokenizer.eog_ids.first().copied())
        .unwrap_or(0);
    let mut info = TokRxInfo::new(n as u32, eos);
    info.tok_bos = tokenizer.bos_id;
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog_or_eos(&tokenizer, eos));
    Arc::new(ModelTokEnv { trie, tokenizer })
}

/// Every end-of-generation id (EOS at least).
fn eog_or_eos(tokenizer: &Tokenizer, eos: u32) -> Vec<u32> {
    let mut ids = tokenizer.eog_ids.clone();
    if !ids.contains(&eos) {
        ids.push(eos);
    }
    ids
}
