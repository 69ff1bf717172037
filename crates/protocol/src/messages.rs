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
            if m.tool_calls.as_ref().is_some_and(|t| !t.is_null()) && m.role != "assistant" {
                return Err(ApiError::invalid_field(
                    &format!("messages[{i}].tool_calls"),
                    "only assistant messages carry `tool_calls`",
                ));
            }
            let role = match m.role.as_str() {
                "system" | "user" | "assistant" | "tool" => m.role.clone(),
                "developer" => "system".to_string(),
                other => {
                    return Err(ApiError::invalid_field(
                        &format!("messages[{i}].role"),
                        format!(
                            "role {other:?} is not supported (system, user, assistant, developer, tool)"
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

/// The conversation as chat templates take it (transformers' form): each message's role and
/// text, an assistant's `tool_calls` with their arguments as objects (vLLM parses the JSON
/// strings, so templates can walk them), a tool message's `tool_call_id`, a `name`.
pub fn messages_json(msgs: &[ChatMessageIn]) -> Result<serde_json::Value, ApiError> {
    use serde_json::{Map, Value};
    let flat = flatten_messages(msgs)?;
    let mut out = Vec::with_capacity(msgs.len());
    for (i, (m, f)) in msgs.iter().zip(flat).enumerate() {
        let mut o = Map::new();
        let calls = m.tool_calls.as_ref().filter(|t| !t.is_null());
        o.insert("role".into(), f.role.into());
        // An assistant turn of calls alone has empty content (not None: templates such as
        // SmolLM2's concatenate it).
        o.insert("content".into(), f.content.into());
        if let Some(calls) = calls {
            o.insert("tool_calls".into(), tool_calls_json(i, calls)?);
        }
        // Templates (Qwen 3's) read the thinking as `reasoning_content`.
        if let Some(r) = m.reasoning.as_ref().or(m.reasoning_content.as_ref()) {
            o.insert("reasoning_content".into(), r.clone().into());
        }
        if let Some(id) = &m.tool_call_id {
            o.insert("tool_call_id".into(), id.clone().into());
        }
        if let Some(n) = &m.name {
            o.insert("name".into(), n.clone().into());
        }
        out.push(Value::Object(o));
    }
    Ok(Value::Array(out))
}

fn tool_calls_json(i: usize, calls: &serde_json::Value) -> Result<serde_json::Value, ApiError> {
    use serde_json::{json, Value};
    let list = calls.as_array().ok_or_else(|| {
        ApiError::invalid_field(
            &format!("messages[{i}].tool_calls"),
            "`tool_calls` must be an array",
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(j, c)| {
            let p = format!("messages[{i}].tool_calls[{j}].function");
            let f = c
                .get("function")
                .ok_or_else(|| ApiError::invalid_field(&p, "a tool call needs a `function`"))?;
            let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid_field(&p, "a tool call's function needs a `name`")
            })?;
            let arguments = match f.get("arguments") {
                Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
                    ApiError::invalid_field(&p, format!("`arguments` is not JSON: {e}"))
                })?,
                Some(v @ Value::Object(_)) => v.clone(),
                None | Some(Value::Null) => json!({}),
                Some(_) => {
                    return Err(ApiError::invalid_field(
                        &p,
                        "`arguments` must be a JSON string",
                    ))
                }
            };
            Ok(json!({
                "id": c.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {"name": name, "arguments": arguments}
            }))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
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
