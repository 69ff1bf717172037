//! Reading a generation request: the body, the model name, the fields we refuse, `n`, the
//! length and log-prob counts, and the shared sampling fields as the engine's
//! `SamplingParams`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use ferrolm_engine::engine::EngineHandle;
use ferrolm_engine::request::ValidRequest;
use ferrolm_engine::sampling::SamplingParams;
use ferrolm_engine::tokenizer::Tokenizer;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::protocol::{CommonParams, WithCommon};
use super::state::{AppState, Loaded};

/// Reads a JSON body: 413 over the limit, 400 for malformed JSON.
pub fn parse_json(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Value, ApiError> {
    let bytes = body.map_err(|e| match e.status() {
        // Cut while streaming in (the body limit layer): nothing beyond the limit was kept.
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over the limit of {} bytes",
                state.max_body_bytes
            ),
        ),
        _ => ApiError::bad_request(format!("could not read the body: {e}")),
    })?;
    if bytes.len() > state.max_body_bytes {
        return Err(body_too_large(bytes.len() as u64, state.max_body_bytes));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes)
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

/// Both of the above.
pub fn parse_body<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    from_json(&parse_json(state, body)?)
}

/// What every generation endpoint (completions, chat) does first: notes the time, takes the
/// loaded model (503 while it loads or the server shuts down), then reads and checks the body,
/// the model name, fields we refuse by name, and `n`. Returns when the handler began (where
/// the request's latencies are measured from), the loaded model, its tokenizer, the request
/// and its `n`.
#[allow(clippy::type_complexity)]
pub fn read_request<T: WithCommon>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Instant, &Loaded, Arc<Tokenizer>, T, usize), ApiError> {
    let started = Instant::now();
    let loaded = state.loaded()?;
    let json = parse_json(state, body)?;
    let mut req: T = from_json(&json)?;
    req.set_common(from_json(&json)?);
    state.check_model(req.common().model.as_deref())?;
    refuse_unsupported(req.common())?;
    let n = choices_n(state, req.common())?;
    Ok((started, loaded, loaded.engine.tokenizer.clone(), req, n))
}

/// Refuses fields we know and do not implement, by name.
pub fn refuse_unsupported(c: &CommonParams) -> Result<(), ApiError> {
    if let Some(t) = &c.tools {
        if !(t.is_null() || t.as_array().is_some_and(|a| a.is_empty())) {
            return Err(ApiError::invalid_field(
                "tools",
                "`tools` (function calling) is not supported yet",
            ));
        }
    }
    if let Some(tc) = &c.tool_choice {
        if !(tc.is_null() || tc.as_str() == Some("none")) {
            return Err(ApiError::invalid_field(
                "tool_choice",
                "`tool_choice` other than \"none\" is not supported yet",
            ));
        }
    }
    if let Some(rf) = &c.response_format {
        let kind = rf.get("type").and_then(|t| t.as_str());
        if !(rf.is_null() || kind == Some("text")) {
            return Err(ApiError::invalid_field(
                "response_format",
                "`response_format` other than {\"type\": \"text\"} is not supported yet",
            ));
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

/// OpenAI/vLLM fields to engine parameters; `max_tokens` resolved by the caller. Only the
/// API's own conventions are read here (negative numbers, `top_k: -1`, string token ids);
/// every range is the engine's to check, once ([`validate_prompts`]).
pub fn sampling_params(
    c: &CommonParams,
    max_tokens: usize,
    logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
) -> Result<SamplingParams, ApiError> {
    let top_k = match c.top_k.unwrap_or(-1) {
        -1 | 0 => 0,
        k if k > 0 => k as usize,
        k => {
            return Err(ApiError::invalid_field(
                "top_k",
                format!("`top_k` must be -1 (off) or at least 1, got {k}"),
            ))
        }
    };
    let min_tokens = usize::try_from(c.min_tokens.unwrap_or(0))
        .map_err(|_| ApiError::invalid_field("min_tokens", "`min_tokens` must not be negative"))?;
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
    Ok(SamplingParams {
        max_tokens,
        min_tokens,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        stop_token_ids: c.stop_token_ids.clone().unwrap_or_default(),
        stop: c.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        temperature: c.temperature.unwrap_or(1.0),
        top_k,
        top_p: c.top_p.unwrap_or(1.0),
        min_p: c.min_p.unwrap_or(0.0),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        logit_bias,
        seed: c.seed.map(|s| s as u64),
        logprobs,
        prompt_logprobs,
        skip_special_tokens: c.skip_special_tokens.unwrap_or(true),
    })
}

/// The engine's one check of each prompt with `params`; its errors become 400s naming the
/// field (`rename` maps an engine field to this endpoint's name, e.g. chat's `top_logprobs`).
pub fn validate_prompts(
    engine: &EngineHandle,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    rename: &[(&'static str, &'static str)],
) -> Result<Vec<ValidRequest>, ApiError> {
    prompts
        .iter()
        .map(|p| {
            engine.validate(p.clone(), params.clone()).map_err(|e| {
                let param = rename
                    .iter()
                    .find(|(from, _)| *from == e.param)
                    .map_or(e.param, |(_, to)| to);
                ApiError::invalid_field(param, e.message)
            })
        })
        .collect()
}

/// A prompt's token ids, encoded on the blocking pool (a long prompt takes seconds of CPU,
/// which would stall the async runtime and every request on it), after refusing one whose
/// byte length alone proves it longer than the context (`param` names it in the error).
pub async fn encode_prompt(
    tok: &Arc<Tokenizer>,
    text: String,
    max_model_len: usize,
    param: &'static str,
) -> Result<Vec<u32>, ApiError> {
    let least = tok.min_tokens_for_bytes(text.len());
    if least >= max_model_len {
        return Err(ApiError::invalid_field(
            param,
            format!(
                "This model's maximum context length is {max_model_len} tokens. However, the prompt of {} bytes is at least {least} tokens.",
                text.len()
            ),
        ));
    }
    let tok = tok.clone();
    tokio::task::spawn_blocking(move || tok.encode(&text, true))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("tokenizing failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// `n` in range, as a count.
pub fn choices_n(state: &AppState, c: &CommonParams) -> Result<usize, ApiError> {
    let n = c.n.unwrap_or(1);
    if n < 1 || n as usize > state.max_n {
        return Err(ApiError::invalid_field(
            "n",
            format!("`n` must be between 1 and {}, got {n}", state.max_n),
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
    if prompt_len + max_tokens > max_model_len {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({prompt_len} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
            prompt_len + max_tokens
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
        Some(m) => Ok(m as usize),
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
