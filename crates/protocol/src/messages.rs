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
