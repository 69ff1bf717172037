//! Chat messages as the API sends them to the chat template's input: roles checked, text
//! parts joined by newlines (only text content is read; other parts are refused by name).

use ferrolm_formats::tokenizer::ChatMessage;

use crate::error::ApiError;
use crate::openai::{ChatMessageIn, MessageContent};

pub fn flatten_messages(msgs: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid_field(
            "messages",
            "`messages` must not be empty",
        ));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            if m.tool_calls.as_ref().is_some_and(|t| !t.is_null()) {
                return Err(ApiError::invalid_field(
                    &format!("messages[{i}].tool_calls"),
                    "assistant `tool_calls` in messages are not supported yet",
                ));
            }
            if m.name.is_some() {
                return Err(ApiError::invalid_field(
                    &format!("messages[{i}].name"),
                    "a message's `name` is not supported yet",
                ));
            }
            let role = match m.role.as_str() {
                "system" | "user" | "assistant" => m.role.clone(),
                "developer" => "system".to_string(),
                other => {
                    return Err(ApiError::invalid_field(
                        &format!("messages[{i}].role"),
                        format!(
                            "role {other:?} is not supported (system, user, assistant, developer)"
                        ),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(MessageContent::Text(s)) => s.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => texts.push(t.clone()),
                            (kind, _) => {
                                return Err(ApiError::invalid_field(
                                    &format!("messages[{i}].content"),
                                    format!(
                                        "content part of type {kind:?} is not supported; only text"
                                    ),
                                ))
                            }
                        }
                    }
                    texts.join("\n")
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// vLLM's `continue_final_message` (transformers' form): the conversation must end with an
/// assistant message and may not also ask for a generation prompt; returns that message's
/// content, after which the rendered prompt is cut ([`cut_after_final_message`]).
pub fn final_message_to_continue(
    messages: &[ChatMessage],
    add_generation_prompt: Option<bool>,
) -> Result<&str, ApiError> {
    if add_generation_prompt == Some(true) {
        return Err(ApiError::invalid_field(
            "continue_final_message",
            "`continue_final_message` and `add_generation_prompt` cannot both be true",
        ));
    }
    match messages.last() {
        Some(m) if m.role == "assistant" => Ok(&m.content),
        _ => Err(ApiError::invalid_field(
            "continue_final_message",
            "`continue_final_message` needs the last message to be the assistant's",
        )),
    }
}

/// The rendered conversation up to the end of the final message's content (the template's
/// end-of-turn markup after it removed), as transformers does: the first occurrence of the
/// content (else of it without surrounding whitespace: templates often strip it) at or after
/// `from`, where the earlier messages and the assistant turn's opening end (the render of
/// the other messages with a generation prompt, when it is a prefix of this one; else 0).
/// An empty final message continues from `from`.
pub fn cut_after_final_message(
    rendered: &str,
    content: &str,
    from: usize,
) -> Result<String, ApiError> {
    let tail = rendered.get(from..).unwrap_or("");
    for c in [content, content.trim()] {
        if c.is_empty() {
            continue;
        }
        if let Some(i) = tail.find(c) {
            return Ok(rendered[..from + i + c.len()].to_string());
        }
    }
    if content.trim().is_empty() && from > 0 {
        return Ok(rendered[..from].to_string());
    }
    Err(ApiError::invalid_field(
        "continue_final_message",
        "the final message's content is not in the rendered chat template",
    ))
}

#[cfg(test)]
mod continue_tests {
    use super::*;

    #[test]
    fn the_prompt_ends_where_the_final_message_does() {
        let chatml =
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nThe answer is<|im_end|>\n";
        let prefix = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
        let at = prefix.len();
        assert_eq!(
            cut_after_final_message(chatml, "The answer is", at).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nThe answer is"
        );
        // Content the template stripped is found without its whitespace.
        assert!(cut_after_final_message(chatml, "  The answer is \n", at)
            .unwrap()
            .ends_with("is"));
        assert!(cut_after_final_message(chatml, "absent", at).is_err());
        // A short content that also occurs in the markup is found where the turn opens, not in
        // a later `<|im_end|>`; one that occurs in an earlier message is not taken from there.
        let e = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\ne<|im_end|>\n";
        assert!(cut_after_final_message(e, "e", at)
            .unwrap()
            .ends_with("assistant\ne"));
        let again = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHi<|im_end|>\n";
        assert!(cut_after_final_message(again, "Hi", at)
            .unwrap()
            .ends_with("assistant\nHi"));
        // Empty: continue where the turn opens.
        let empty = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n";
        assert_eq!(cut_after_final_message(empty, "", at).unwrap(), prefix);
        let msgs = [
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "The"),
        ];
        assert_eq!(final_message_to_continue(&msgs, None).unwrap(), "The");
        assert!(final_message_to_continue(&msgs, Some(true)).is_err());
        assert!(final_message_to_continue(&msgs[..1], Some(false)).is_err());
    }
}
