//! The checks a request passes before the engine sees it, apart from the engine: the body as
//! a JSON object within the size limit, typed fields (a wrong type is a 400 naming the
//! field), fields we know and refuse by name, `n`, `max_tokens`, log-prob counts, and the API's
//! own conventions for sampling fields (`top_k: -1`, string token ids in `logit_bias`). Every
//! range the engine also checks is left to the engine, once.

use ferrolm_formats::hf::GenerationDefaults;
use http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::openai::CommonParams;

/// Reads a JSON object from a body already cut at `max_body_bytes`: 413 over the limit, 400
/// for malformed JSON or a non-object.
pub fn parse_json(bytes: &[u8], max_body_bytes: usize) -> Result<serde_json::Value, ApiError> {
    if bytes.len() > max_body_bytes {
        return Err(body_too_large(bytes.len() as u64, max_body_bytes));
    }
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// 413 for a body of `len` bytes over `limit`.
pub fn body_too_large(len: u64, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is {len} bytes; the limit is {limit}"),
    )
}

/// Typed fields from the body; a wrong type is a 400 naming the field.
pub fn from_json<T: DeserializeOwned>(v: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("invalid request: {inner}"))
        } else {
            ApiError::invalid_field(&path, format!("invalid value for `{path}`: {inner}"))
        }
    })
}

/// The model's sampling defaults (`generation_config.json`, vLLM's `--generation-config
/// auto`) for the fields the request leaves out.
pub fn apply_generation_defaults(c: &mut CommonParams, d: &GenerationDefaults) {
    c.temperature = c.temperature.or(d.temperature);
    c.top_p = c.top_p.or(d.top_p);
    c.top_k = c.top_k.or(d.top_k);
    c.min_p = c.min_p.or(d.min_p);
    c.repetition_penalty = c.repetition_penalty.or(d.repetition_penalty);
}

/// Refuses fields we know and do not implement, by name.
/// `chat`: tools are chat's (`crate::tools`); elsewhere they are refused by name.
pub fn refuse_unsupported(c: &CommonParams, chat: bool) -> Result<(), ApiError> {
    if !chat {
        if let Some(t) = &c.tools {
            if !(t.is_null() || t.as_array().is_some_and(|a| a.is_empty())) {
                return Err(ApiError::invalid_field(
                    "tools",
                    "`tools` (function calling) is a chat field",
                ));
            }
        }
        if let Some(tc) = &c.tool_choice {
            if !(tc.is_null() || tc.as_str() == Some("none")) {
                return Err(ApiError::invalid_field(
                    "tool_choice",
                    "`tool_choice` is a chat field",
                ));
            }
        }
    }
    if c.best_of.is_some_and(|b| b > 1) {
        return Err(ApiError::invalid_field(
            "best_of",
            "`best_of` is not supported",
        ));
    }
    if c.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_field(
            "suffix",
            "`suffix` is not supported",
        ));
    }
    Ok(())
}

/// Present and not null, not false, not empty.
fn is_set(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// The structured-output fields of completions and chat (`crate::structured`), refused by
/// name where an endpoint does not take them (the Responses API, whose `text.format` is its
/// own).
pub fn refuse_structured_fields(body: &serde_json::Value) -> Result<(), ApiError> {
    let Some(obj) = body.as_object() else {
        return Ok(());
    };
    for field in [
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_whitespace_pattern",
        "structured_outputs",
    ] {
        if obj.get(field).is_some_and(is_set) {
            return Err(ApiError::invalid_field(
                field,
                format!("`{field}` (structured outputs) is not supported on this endpoint"),
            ));
        }
    }
    if let Some(rf) = obj.get("response_format").filter(|v| is_set(v)) {
        if rf.get("type").and_then(|t| t.as_str()) != Some("text") {
            return Err(ApiError::invalid_field(
                "response_format",
                "`response_format` is not supported on this endpoint",
            ));
        }
    }
    Ok(())
}

/// vLLM's and OpenAI's fields that change the output and are not implemented, read from the
/// raw body (they have no place in our request types, and serde would drop them silently):
/// each is a 400 naming it when set to anything but its neutral value. Fields that do not
/// change the output (`user`, `metadata`, `store`, `service_tier`, `priority`...) stay
/// accepted. (Structured outputs, `guided_*` included: `crate::structured`.)
pub fn refuse_ignored_fields(body: &serde_json::Value, chat: bool) -> Result<(), ApiError> {
    use serde_json::Value;
    let Some(obj) = body.as_object() else {
        return Ok(());
    };
    let set = is_set;
    // (field, refused when): vLLM 0.34's request fields (docs/api.md) that change the
    // answer and have no implementation here. `Set`: present and not null/false/empty.
    enum When {
        Set,
        NotNull,
        False,
        NotOne,
        NotZero,
    }
    const REFUSED: [(&str, When); 24] = [
        ("truncate_prompt_tokens", When::NotNull),
        ("bad_words", When::Set),
        ("allowed_token_ids", When::Set),
        ("spaces_between_special_tokens", When::False),
        ("use_beam_search", When::Set),
        ("length_penalty", When::NotOne),
        ("logits_processors", When::Set),
        ("return_tokens_as_token_ids", When::Set),
        ("watermarking", When::Set),
        ("logprob_token_ids", When::Set),
        ("prompt_embeds", When::Set),
        ("return_token_ids", When::Set),
        ("return_weight_versions", When::Set),
        ("routed_experts_prompt_start", When::NotZero),
        ("return_token_offsets", When::Set),
        ("return_prompt_text", When::Set),
        ("mm_payload", When::Set),
        ("return_mm_kwargs", When::Set),
        ("media_io_kwargs", When::Set),
        ("mm_processor_kwargs", When::Set),
        ("vllm_xargs", When::Set),
        ("repetition_detection", When::Set),
        ("thinking_token_budget", When::NotNull),
        ("reasoning_effort", When::NotNull),
    ];
    for (field, when) in &REFUSED {
        let Some(v) = obj.get(*field) else { continue };
        let on = match when {
            When::Set => set(v),
            When::NotNull => !v.is_null(),
            When::False => v == &Value::Bool(false),
            When::NotOne => !v.is_null() && v.as_f64() != Some(1.0),
            When::NotZero => !v.is_null() && v.as_f64() != Some(0.0),
        };
        if on {
            return Err(ApiError::invalid_field(
                field,
                format!("`{field}` is not supported yet"),
            ));
        }
    }
    // Chat: without a reasoning parser the reasoning stays in the content, so asking for it
    // to be left out cannot be honoured. Completions: the prompt gets the tokenizer's
    // special tokens (vLLM's default there), so asking for none cannot either.
    let refused_off = [("include_reasoning", chat), ("add_special_tokens", !chat)];
    for (field, applies) in refused_off {
        if applies && obj.get(field) == Some(&Value::Bool(false)) {
            return Err(ApiError::invalid_field(
                field,
                format!("`{field}: false` is not supported yet"),
            ));
        }
    }
    if chat && obj.get("echo").is_some_and(set) {
        return Err(ApiError::invalid_field(
            "echo",
            "`echo` on chat completions is not supported yet",
        ));
    }
    let prompt_logprobs = obj.get("prompt_logprobs").is_some_and(|v| !v.is_null());
    if prompt_logprobs && obj.get("stream").is_some_and(set) {
        return Err(ApiError::invalid_field(
            "prompt_logprobs",
            "`prompt_logprobs` is returned in non-streamed answers only so far",
        ));
    }
    Ok(())
}

/// vLLM's chat-template fields we do not implement yet, refused by name (each changes the
/// prompt the template renders).
pub fn refuse_unsupported_chat(r: &crate::openai::ChatRequest) -> Result<(), ApiError> {
    let set = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
    };
    let refused = [
        ("documents", set(&r.documents)),
        ("chat_template", r.chat_template.is_some()),
        ("add_special_tokens", r.add_special_tokens == Some(true)),
    ];
    match refused.iter().find(|(_, on)| *on) {
        Some((field, _)) => Err(ApiError::invalid_field(
            field,
            format!("`{field}` is not supported yet"),
        )),
        None => Ok(()),
    }
}

/// `n` between 1 and `max_n`, as a count.
pub fn choices_n(c: &CommonParams, max_n: usize) -> Result<usize, ApiError> {
    let n = c.n.unwrap_or(1);
    if n < 1 || n as u64 > max_n as u64 {
        return Err(ApiError::invalid_field(
            "n",
            format!("`n` must be between 1 and {max_n}, got {n}"),
        ));
    }
    Ok(n as usize)
}

/// The length check vLLM's API server makes (prompt + max_tokens within the context), with its
/// message; an empty prompt is the engine's to refuse.
pub fn check_length(
    prompt_len: usize,
    max_tokens: usize,
    max_model_len: usize,
) -> Result<(), ApiError> {
    let total = prompt_len.saturating_add(max_tokens);
    if total > max_model_len {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max_model_len} tokens. However, you requested {total} tokens ({prompt_len} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
        ))
        .with_param("max_tokens"));
    }
    Ok(())
}

/// `max_tokens` as asked (at least 1), or `default` when the request leaves it out.
pub fn max_tokens_or(requested: Option<i64>, default: usize) -> Result<usize, ApiError> {
    match requested {
        Some(m) if m < 1 => Err(ApiError::invalid_field(
            "max_tokens",
            format!("`max_tokens` must be at least 1, got {m}"),
        )),
        Some(m) => Ok(usize::try_from(m).unwrap_or(usize::MAX)),
        None => Ok(default),
    }
}

/// A count of log-prob alternatives (`logprobs`, `top_logprobs`, `prompt_logprobs`): not
/// negative (the engine checks the upper bound).
pub fn logprobs_count(name: &str, k: Option<i64>) -> Result<Option<usize>, ApiError> {
    k.map(|k| {
        usize::try_from(k).map_err(|_| {
            ApiError::invalid_field(name, format!("`{name}` must not be negative, got {k}"))
        })
    })
    .transpose()
}

/// The sampling fields whose API conventions differ from the engine's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConventions {
    /// 0 is off (the API's -1 or 0).
    pub top_k: usize,
    pub min_tokens: usize,
    /// Sorted by token id.
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
}

impl SamplingConventions {
    pub fn read(c: &CommonParams) -> Result<Self, ApiError> {
        let top_k = match c.top_k.unwrap_or(-1) {
            -1 | 0 => 0,
            k if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
            k => {
                return Err(ApiError::invalid_field(
                    "top_k",
                    format!("`top_k` must be -1 (off) or at least 1, got {k}"),
                ))
            }
        };
        let min_tokens = usize::try_from(c.min_tokens.unwrap_or(0)).map_err(|_| {
            ApiError::invalid_field("min_tokens", "`min_tokens` must not be negative")
        })?;
        let mut logit_bias = Vec::new();
        if let Some(lb) = &c.logit_bias {
            for (k, &v) in lb {
                let id: u32 = k.parse().map_err(|_| {
                    ApiError::invalid_field(
                        "logit_bias",
                        format!("`logit_bias` key {k:?} is not a token id"),
                    )
                })?;
                logit_bias.push((id, v));
            }
            logit_bias.sort_by_key(|(id, _)| *id);
        }
        Ok(Self {
            top_k,
            min_tokens,
            logit_bias,
            // OpenAI's seed is a signed 64-bit integer; its bits are the engine's seed.
            seed: c.seed.map(|s| s as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{ChatRequest, CompletionRequest};

    fn common(json: &str) -> Result<CommonParams, ApiError> {
        from_json(&parse_json(json.as_bytes(), 1 << 20)?)
    }

    #[test]
    fn body_checks_answer_with_the_right_status_and_field() {
        assert_eq!(parse_json(b"{}", 1).unwrap_err().status, 413);
        assert_eq!(parse_json(b"[1]", 100).unwrap_err().status, 400);
        assert_eq!(parse_json(b"{\"a\":", 100).unwrap_err().status, 400);
        let e = common(r#"{"max_tokens": "ten"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e =
            from_json::<ChatRequest>(&parse_json(br#"{"messages": 3}"#, 100).unwrap()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert!(from_json::<CompletionRequest>(&parse_json(b"{}", 100).unwrap()).is_ok());
    }

    #[test]
    fn fields_that_would_be_silently_ignored_are_refused_by_name() {
        let j = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        for (json, chat, field) in [
            (
                r#"{"truncate_prompt_tokens": 5}"#,
                false,
                "truncate_prompt_tokens",
            ),
            (r#"{"bad_words": ["x"]}"#, true, "bad_words"),
            (
                r#"{"allowed_token_ids": [1, 2]}"#,
                false,
                "allowed_token_ids",
            ),
            (
                r#"{"spaces_between_special_tokens": false}"#,
                false,
                "spaces_between_special_tokens",
            ),
            (r#"{"use_beam_search": true}"#, false, "use_beam_search"),
            (r#"{"length_penalty": 0.5}"#, false, "length_penalty"),
            (r#"{"echo": true}"#, true, "echo"),
            (
                r#"{"prompt_logprobs": 1, "stream": true}"#,
                true,
                "prompt_logprobs",
            ),
            (
                r#"{"prompt_logprobs": 1, "stream": true}"#,
                false,
                "prompt_logprobs",
            ),
        ] {
            let e = refuse_ignored_fields(&j(json), chat).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{json}");
        }
        // Neutral values, fields that do not change the output, and the echo form that is
        // implemented pass.
        for (json, chat) in [
            (
                r#"{"guided_json": null, "include_stop_str_in_output": false, "bad_words": []}"#,
                true,
            ),
            (
                r#"{"spaces_between_special_tokens": true, "length_penalty": 1.0}"#,
                false,
            ),
            (
                r#"{"user": "u", "metadata": {"a": "b"}, "store": false, "service_tier": "auto", "priority": 3}"#,
                true,
            ),
            (r#"{"prompt_logprobs": 1, "echo": true}"#, false),
            (r#"{"prompt_logprobs": 1}"#, true),
            (r#"{"prompt_logprobs": 0, "stream": false}"#, false),
        ] {
            refuse_ignored_fields(&j(json), chat).unwrap();
        }
    }

    #[test]
    fn fields_we_do_not_implement_are_refused_by_name() {
        for (json, field) in [
            (r#"{"tools": [{"type": "function"}]}"#, "tools"),
            (r#"{"tool_choice": "auto"}"#, "tool_choice"),
            (r#"{"best_of": 2}"#, "best_of"),
            (r#"{"suffix": "x"}"#, "suffix"),
        ] {
            let e = refuse_unsupported(&common(json).unwrap(), false).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{json}");
        }
        let fine = r#"{"tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "best_of": 1, "suffix": ""}"#;
        refuse_unsupported(&common(fine).unwrap(), false).unwrap();
        let tools = r#"{"tools": [{"type": "function"}], "tool_choice": "auto"}"#;
        refuse_unsupported(&common(tools).unwrap(), true).unwrap();
        let chat = |j: &str| from_json::<ChatRequest>(&parse_json(j.as_bytes(), 1 << 10).unwrap());
        for (json, field) in [(
            r#"{"messages": [], "chat_template": "{{ x }}"}"#,
            "chat_template",
        )] {
            let e = refuse_unsupported_chat(&chat(json).unwrap()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{json}");
        }
        refuse_unsupported_chat(&chat(r#"{"messages": [], "chat_template_kwargs": {}}"#).unwrap())
            .unwrap();
        let msgs = chat(r#"{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]}]}"#).unwrap();
        let e = crate::messages::messages_json(&msgs.messages).unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].tool_calls[0].function")
        );
    }

    #[test]
    fn api_conventions_become_engine_values() {
        let c = common(r#"{"top_k": -1, "logit_bias": {"7": 1.5, "3": -2}, "seed": -1}"#).unwrap();
        let s = SamplingConventions::read(&c).unwrap();
        assert_eq!(s.top_k, 0);
        assert_eq!(s.logit_bias, vec![(3, -2.0), (7, 1.5)]);
        assert_eq!(s.seed, Some(u64::MAX));
        for (json, field) in [
            (r#"{"top_k": -2}"#, "top_k"),
            (r#"{"min_tokens": -1}"#, "min_tokens"),
            (r#"{"logit_bias": {"x": 1}}"#, "logit_bias"),
        ] {
            let e = SamplingConventions::read(&common(json).unwrap()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{json}");
        }
        assert_eq!(
            choices_n(&common(r#"{"n": 0}"#).unwrap(), 4)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(choices_n(&common(r#"{"n": 4}"#).unwrap(), 4).unwrap(), 4);
        assert!(max_tokens_or(Some(0), 5).is_err());
        assert_eq!(max_tokens_or(None, 5).unwrap(), 5);
        assert!(check_length(usize::MAX, 1, 10).is_err());
        assert!(logprobs_count("logprobs", Some(-1)).is_err());
        let mut c = common(r#"{"temperature": 0.0}"#).unwrap();
        let d = GenerationDefaults {
            temperature: Some(0.6),
            top_k: Some(20),
            ..Default::default()
        };
        apply_generation_defaults(&mut c, &d);
        assert_eq!(
            (c.temperature, c.top_k, c.top_p),
            (Some(0.0), Some(20), None)
        );
    }
}
