//! Tokenizer (from GGUF metadata), incremental detokenization and chat templates. They live
//! in `ferrolm_formats::tokenizer` (no candle, fuzzed); the engine's [`Tokenizer`] and
//! [`ChatTemplate`] wrap them only so that their fallible calls answer
//! [`EngineError`](crate::EngineError), which
//! the server maps to HTTP. Everything else is reached through `Deref`.

use std::ops::Deref;

pub use ferrolm_formats::tokenizer::{gguf_bpe, ChatMessage, IncrementalDecoder, RenderLimits};

use crate::error::Result;
use crate::gguf::GgufFile;

/// A model's tokenizer: text <-> token ids, plus what the engine needs to know about
/// special tokens (BOS, EOS, the other end-of-generation ids).
pub struct Tokenizer(ferrolm_formats::tokenizer::Tokenizer);

impl Tokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        Ok(Self(ferrolm_formats::tokenizer::Tokenizer::from_gguf(
            gguf,
        )?))
    }

    /// A checkpoint's `tokenizer.json` with the special tokens, end-of-generation ids and
    /// chat template of `folder`'s files.
    pub fn from_hf(
        tokenizer_json: &std::path::Path,
        folder: &ferrolm_formats::hf::HfFolder,
    ) -> Result<Self> {
        Ok(Self(ferrolm_formats::tokenizer::Tokenizer::from_hf(
            tokenizer_json,
            folder,
        )?))
    }

    /// Token ids of `text`. `parse_special`: whether special-token text (`<|im_start|>`)
    /// becomes the special token, as chat prompts need, or stays ordinary text. BOS is
    /// prepended when the model asks for it.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        Ok(self.0.encode(text, parse_special)?)
    }
}

impl Deref for Tokenizer {
    type Target = ferrolm_formats::tokenizer::Tokenizer;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A compiled chat template, each render bounded by its [`RenderLimits`].
pub struct ChatTemplate(ferrolm_formats::tokenizer::ChatTemplate);

impl ChatTemplate {
    /// The template with the tokenizer's BOS and EOS pieces as `bos_token`/`eos_token`.
    pub fn for_tokenizer(source: &str, tokenizer: &Tokenizer) -> Result<Self> {
        Ok(Self(
            ferrolm_formats::tokenizer::ChatTemplate::for_tokenizer(source, tokenizer)?,
        ))
    }

    /// The template with exactly these special tokens (name, text) in its context, as
    /// transformers passes a checkpoint's `special_tokens_map`.
    pub fn with_special_tokens<'a>(
        source: &str,
        special_tokens: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        Ok(Self(
            ferrolm_formats::tokenizer::ChatTemplate::with_special_tokens(source, special_tokens)?,
        ))
    }

    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        Ok(Self(ferrolm_formats::tokenizer::ChatTemplate::new(
            source, bos_token, eos_token,
        )?))
    }

    /// The prompt text for `messages`; `add_generation_prompt` opens the assistant's turn.
    /// A template's `raise_exception` is an [`InvalidRequest`](crate::EngineError::InvalidRequest).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        Ok(self.0.render(messages, add_generation_prompt)?)
    }

    /// The prompt for a conversation in OpenAI's JSON form, with tools and the request's
    /// extra template variables (see the formats crate's `render_json`).
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        Ok(self
            .0
            .render_json(messages, tools, add_generation_prompt, extra)?)
    }
}

impl Deref for ChatTemplate {
    type Target = ferrolm_formats::tokenizer::ChatTemplate;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineError;

    #[test]
    fn a_template_rejection_is_an_invalid_request() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        match t.render(&[ChatMessage::new("system", "x")], true) {
            Err(EngineError::InvalidRequest(m)) => {
                assert_eq!(m, "the chat template rejected the messages: no system role")
            }
            other => panic!("expected an invalid request, got {other:?}"),
        }
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(EngineError::Text(ferrolm_formats::Error::ChatTemplate(_)))
        ));
    }
}
