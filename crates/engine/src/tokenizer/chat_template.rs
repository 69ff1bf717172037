//! Chat templates (Jinja) rendered as Hugging Face renders them: trim_blocks, lstrip_blocks,
//! Python string methods, `raise_exception`, `strftime_now`, special tokens in the context.

use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;

use crate::error::{EngineError, Result};

/// One message of a conversation, its content already flattened to text.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// The template with the tokenizer's BOS and EOS pieces as `bos_token`/`eos_token`.
    pub fn for_tokenizer(source: &str, tokenizer: &super::Tokenizer) -> Result<Self> {
        let name = |id: Option<u32>| id.and_then(|i| tokenizer.piece(i)).unwrap_or("");
        Self::new(source, name(tokenizer.bos_id), name(tokenizer.eos_id))
    }

    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Templates call str.strip(), .startswith(), dict.items() ... as Python would.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            chrono::Local::now().format(&fmt).to_string()
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| EngineError::ChatTemplate(format!("does not compile: {e}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The prompt text for `messages`; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| match e.kind() {
            // raise_exception from the template is the template rejecting the conversation.
            ErrorKind::InvalidOperation => EngineError::InvalidRequest(format!(
                "the chat template rejected the messages: {}",
                e.detail().unwrap_or("")
            )),
            _ => EngineError::ChatTemplate(format!("render failed: {e}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm_template_adds_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "S"),
                    ChatMessage::new("user", "U"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        );
    }

    #[test]
    fn python_methods_trim_and_raise_work() {
        let src = "{% for m in messages %}\n  {{ m.content.strip().upper() }}{% if m.role.startswith('us') %}!{% endif %}\n{% endfor %}{% if messages|length > 2 %}{{ raise_exception('too many') }}{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "  hi ")], false)
            .unwrap();
        // As jinja2 with trim_blocks + lstrip_blocks: newlines after block tags go, the
        // indentation before a {{ }} expression stays.
        assert_eq!(out, "  HI!");
        let many = vec![ChatMessage::new("user", "a"); 3];
        match t.render(&many, false) {
            Err(EngineError::InvalidRequest(m)) => assert!(m.contains("too many"), "{m}"),
            other => panic!("expected the template's exception, got {other:?}"),
        }
    }

    #[test]
    fn broken_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    #[test]
    fn strftime_now_renders_a_date() {
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
        let year = t.render(&[], false).unwrap();
        assert_eq!(year.len(), 4);
        assert!(year.chars().all(|c| c.is_ascii_digit()));
    }
}
