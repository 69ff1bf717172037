//! Reading a generation request into the engine's terms: the body through
//! ferrolm-protocol's checks (size, JSON, typed fields, refused fields, `n`), the model name,
//! the shared sampling fields as the engine's `SamplingParams`, and the engine's one check of
//! each prompt.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use ferrolm_engine::engine::EngineHandle;
use ferrolm_engine::request::ValidRequest;
use ferrolm_engine::sampling::SamplingParams;
use ferrolm_engine::structured::{GrammarSpec, JsonLayout, StructuredOutput};
use ferrolm_engine::tokenizer::Tokenizer;
use ferrolm_protocol::openai::{CommonParams, WithCommon};
use ferrolm_protocol::structured::{Constraint, StructuredRequest};
use ferrolm_protocol::validate::{
    apply_generation_defaults, choices_n, refuse_unsupported, SamplingConventions,
};
pub use ferrolm_protocol::validate::{
    body_too_large, check_length, from_json, logprobs_count, max_tokens_or,
};
use serde::de::DeserializeOwned;

use super::error::{from_engine, ApiError};
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
    ferrolm_protocol::validate::parse_json(&bytes, state.max_body_bytes)
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
    ferrolm_protocol::validate::refuse_ignored_fields(&json, T::IS_CHAT)?;
    let mut req: T = from_json(&json)?;
    let mut common: CommonParams = from_json(&json)?;
    common.structured = ferrolm_protocol::structured::structured_request(&json)?;
    if T::IS_CHAT {
        common.tool_request = ferrolm_protocol::tools::tools_request(&json, &state.tool_limits)?;
    }
    apply_generation_defaults(&mut common, &loaded.generation_defaults);
    req.set_common(common);
    state.check_model(req.common().model.as_deref())?;
    refuse_unsupported(req.common(), T::IS_CHAT)?;
    let n = choices_n(req.common(), state.max_n)?;
    Ok((started, loaded, loaded.engine.tokenizer.clone(), req, n))
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
    let conv = SamplingConventions::read(c)?;
    Ok(SamplingParams {
        max_tokens,
        min_tokens: conv.min_tokens,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        stop_token_ids: c.stop_token_ids.clone().unwrap_or_default(),
        stop: c.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        include_stop_str_in_output: c.include_stop_str_in_output.unwrap_or(false),
        temperature: c.temperature.unwrap_or(1.0),
        top_k: conv.top_k,
        top_p: c.top_p.unwrap_or(1.0),
        min_p: c.min_p.unwrap_or(0.0),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        logit_bias: conv.logit_bias,
        seed: conv.seed,
        logprobs,
        prompt_logprobs,
        skip_special_tokens: c.skip_special_tokens.unwrap_or(true),
        structured: c.structured.as_ref().map(structured_output),
    })
}

/// The API's constraint in the engine's terms.
pub fn structured_output(r: &StructuredRequest) -> StructuredOutput {
    let spec = match &r.constraint {
        Constraint::Json(s) => GrammarSpec::JsonSchema(s.clone()),
        Constraint::JsonObject => GrammarSpec::JsonObject,
        Constraint::Regex(x) => GrammarSpec::Regex(x.clone()),
        Constraint::Choice(c) => GrammarSpec::Choice(c.clone()),
        Constraint::Grammar(g) => GrammarSpec::Lark(g.clone()),
    };
    StructuredOutput {
        spec,
        layout: JsonLayout {
            compact: r.compact,
            whitespace_pattern: r.whitespace_pattern.clone(),
        },
        param: r.param,
    }
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
        .map_err(from_engine)
}
