//! OpenAI's Responses API as vLLM serves it: the request (text in, text out; tools, reasoning
//! and structured output refused by name until they are implemented; vLLM's sampling extras
//! are read from the same body as the other endpoints' `CommonParams`), its input as chat
//! messages, and the response object and stream events the official SDKs parse.

use ferrolm_formats::tokenizer::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;

#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesRequest {
    pub model: Option<String>,
    /// A string (one user message) or a list of messages / message items.
    pub input: Option<Value>,
    /// A system message put first.
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stream: bool,
    /// Continue a stored response's conversation.
    pub previous_response_id: Option<String>,
    /// Keep the response for `GET /v1/responses/{id}` and `previous_response_id` (default true).
    pub store: Option<bool>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub text: Option<Value>,
    pub reasoning: Option<Value>,
    pub top_logprobs: Option<i64>,
    pub include: Option<Value>,
    pub truncation: Option<String>,
    pub background: Option<bool>,
    pub max_tool_calls: Option<i64>,
    pub prompt: Option<Value>,
    pub conversation: Option<Value>,
    pub chat_template_kwargs: Option<Value>,
    pub enable_response_messages: Option<bool>,
    pub previous_input_messages: Option<Value>,
}

fn refuse(field: &str, what: &str) -> ApiError {
    ApiError::invalid_field(field, format!("`{field}` {what} is not supported yet"))
}

impl ResponsesRequest {
    /// Fields that would change the answer and are not implemented: a 400 naming each.
    pub fn refuse_unsupported(&self) -> Result<(), ApiError> {
        let nonempty = |v: &Option<Value>| {
            v.as_ref().is_some_and(|v| match v {
                Value::Null => false,
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
                Value::String(s) => !s.is_empty(),
                _ => true,
            })
        };
        if nonempty(&self.tools) {
            return Err(refuse("tools", "(function calling)"));
        }
        if let Some(tc) = &self.tool_choice {
            if !(tc.is_null() || tc == "auto" || tc == "none") {
                return Err(refuse("tool_choice", "other than \"auto\" or \"none\""));
            }
        }
        if let Some(t) = &self.text {
            let kind = &t["format"]["type"];
            if !(t.is_null() || kind.is_null() || kind == "text") {
                return Err(refuse("text", "with a format other than text"));
            }
        }
        if nonempty(&self.reasoning) {
            return Err(refuse("reasoning", ""));
        }
        if self.top_logprobs.is_some_and(|k| k > 0) {
            return Err(refuse("top_logprobs", ""));
        }
        if nonempty(&self.include) {
            return Err(refuse("include", ""));
        }
        if self.truncation.as_deref().is_some_and(|t| t != "disabled") {
            return Err(refuse("truncation", "other than \"disabled\""));
        }
        if self.background == Some(true) {
            return Err(refuse("background", ""));
        }
        if nonempty(&self.prompt) {
            return Err(refuse("prompt", "(stored prompt templates)"));
        }
        if nonempty(&self.conversation) {
            return Err(refuse("conversation", "(stored conversations)"));
        }
        if nonempty(&self.chat_template_kwargs) {
            return Err(refuse("chat_template_kwargs", ""));
        }
        if self.enable_response_messages == Some(true) {
            return Err(refuse("enable_response_messages", ""));
        }
        if nonempty(&self.previous_input_messages) {
            return Err(refuse("previous_input_messages", ""));
        }
        Ok(())
    }

    /// The input as chat messages (after `history`, a stored response's conversation), the
    /// instructions as a system message first.
    pub fn messages(&self, history: &[ChatMessage]) -> Result<Vec<ChatMessage>, ApiError> {
        let mut out = Vec::new();
        if let Some(i) = &self.instructions {
            out.push(ChatMessage::new("system", i.clone()));
        }
        out.extend(history.iter().cloned());
        match &self.input {
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_field("input", "`input` is required"))
            }
            Some(Value::String(s)) => out.push(ChatMessage::new("user", s.clone())),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    out.push(input_item(item, i)?);
                }
            }
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "input",
                    "`input` must be a string or a list of messages",
                ))
            }
        }
        if out.iter().all(|m| m.role == "system") {
            return Err(ApiError::invalid_field("input", "`input` has no message"));
        }
        Ok(out)
    }
}

/// One input item: a message (`{"role", "content"}`, `type` "message" or absent) whose content
/// is a string or text parts (`input_text`, `output_text`, `text`).
fn input_item(item: &Value, i: usize) -> Result<ChatMessage, ApiError> {
    let field = format!("input[{i}]");
    let bad = |what: &str| ApiError::invalid_field(&field, format!("`{field}` {what}"));
    let kind = item["type"].as_str().unwrap_or("message");
    if kind != "message" {
        return Err(bad(&format!(
            "of type {kind:?} is not supported yet (messages only)"
        )));
    }
    let role = item["role"].as_str().ok_or_else(|| bad("needs a role"))?;
    if !matches!(role, "user" | "assistant" | "system" | "developer") {
        return Err(bad(&format!(
            "has role {role:?} (user, assistant, system, developer)"
        )));
    }
    let role = if role == "developer" { "system" } else { role };
    let content = match &item["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for p in parts {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => texts.push(t),
                    (t, _) => {
                        return Err(bad(&format!(
                            "has a content part of type {t:?}: only text is supported"
                        )))
                    }
                }
            }
            texts.join("\n")
        }
        _ => return Err(bad("needs a string or a list of text parts as content")),
    };
    Ok(ChatMessage::new(role, content))
}

/// What the response object says about the request it answers.
pub struct ResponseHead<'a> {
    pub id: &'a str,
    pub created_at: u64,
    pub model: &'a str,
    pub req: &'a ResponsesRequest,
}

/// The response's one output message.
pub fn output_message(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// The response object: `status` in_progress (no output yet), completed or incomplete (the
/// output cut by `max_output_tokens`).
pub fn response_object(
    head: &ResponseHead,
    status: &str,
    output: Vec<Value>,
    usage: Option<(usize, usize, usize)>,
) -> Value {
    let r = head.req;
    json!({
        "id": head.id,
        "object": "response",
        "created_at": head.created_at,
        "status": status,
        "model": head.model,
        "output": output,
        "error": if status == "failed" { json!({"code": "server_error", "message": "the request was aborted"}) } else { Value::Null },
        "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "instructions": r.instructions,
        "max_output_tokens": r.max_output_tokens,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "previous_response_id": r.previous_response_id,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "store": r.store.unwrap_or(true),
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": usage.map(|(input, output, cached)| json!({
            "input_tokens": input,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(j: Value) -> ResponsesRequest {
        serde_json::from_value(j).unwrap()
    }

    #[test]
    fn input_becomes_chat_messages() {
        let r = req(json!({"input": "Hi", "instructions": "Be brief."}));
        let m = r.messages(&[]).unwrap();
        assert_eq!(
            m,
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Hi")
            ]
        );
        let r = req(json!({"input": [
            {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
            {"role": "developer", "content": "d"}
        ]}));
        let history = [ChatMessage::new("user", "before")];
        let m = r.messages(&history).unwrap();
        assert_eq!(m[0], history[0]);
        assert_eq!(m[1], ChatMessage::new("user", "a\nb"));
        assert_eq!(m[2], ChatMessage::new("assistant", "c"));
        assert_eq!(m[3], ChatMessage::new("system", "d"));
        for (bad, field) in [
            (json!({}), "input"),
            (json!({"input": 3}), "input"),
            (
                json!({"input": [{"role": "tool", "content": "x"}]}),
                "input[0]",
            ),
            (
                json!({"input": [{"type": "function_call_output", "output": "x"}]}),
                "input[0]",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}),
                "input[0]",
            ),
        ] {
            let e = req(bad.clone()).messages(&[]).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{bad}");
        }
    }

    #[test]
    fn what_is_not_implemented_is_refused_by_name() {
        for (j, field) in [
            (
                json!({"tools": [{"type": "function", "name": "f"}]}),
                "tools",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"text": {"format": {"type": "json_schema"}}}), "text"),
            (json!({"reasoning": {"effort": "low"}}), "reasoning"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (
                json!({"include": ["message.output_text.logprobs"]}),
                "include",
            ),
            (json!({"truncation": "auto"}), "truncation"),
            (json!({"background": true}), "background"),
        ] {
            let e = req(j.clone()).refuse_unsupported().unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{j}");
        }
        req(json!({"tools": [], "tool_choice": "auto", "text": {"format": {"type": "text"}}, "truncation": "disabled", "store": false, "metadata": {"a": "b"}}))
            .refuse_unsupported()
            .unwrap();
    }
}
