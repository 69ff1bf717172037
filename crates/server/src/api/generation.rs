//! What completions and chat share: reading and checking the body, turning OpenAI fields
//! into sampling parameters, submitting to the engine (aborting on drop), and metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use ferrolm_engine::engine::{EngineHandle, RequestOutput};
use ferrolm_engine::sampling::SamplingParams;
use ferrolm_engine::scheduler::{FinishReason, RequestId};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::types::CommonParams;
use super::{Admission, AppState};

pub const MAX_LOGPROBS: i64 = 20;

/// Reads a JSON body: 413 over the limit, 400 for malformed JSON.
pub fn parse_json(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Value, ApiError> {
    let bytes = body.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
    if bytes.len() > state.max_body_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is {} bytes; the limit is {}",
                bytes.len(),
                state.max_body_bytes
            ),
        ));
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

/// An endpoint's request type: its own fields plus the shared sampling fields, which are read
/// from the same JSON separately (see `CommonParams`).
pub trait WithCommon: DeserializeOwned {
    fn common(&self) -> &CommonParams;
    fn set_common(&mut self, c: CommonParams);
}

/// Reads and checks what every generation endpoint checks first: the body, the model name,
/// fields we refuse by name, and `n`. Returns the request and its `n`.
pub fn read_request<T: WithCommon>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(T, usize), ApiError> {
    let json = parse_json(state, body)?;
    let mut req: T = from_json(&json)?;
    req.set_common(from_json(&json)?);
    state.check_model(req.common().model.as_deref())?;
    refuse_unsupported(req.common())?;
    let n = choices_n(state, req.common())?;
    Ok((req, n))
}

fn field<T>(name: &str, ok: bool, v: T) -> Result<T, ApiError> {
    if ok {
        Ok(v)
    } else {
        Err(ApiError::invalid_field(
            name,
            format!("`{name}` is out of range"),
        ))
    }
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

/// OpenAI/vLLM fields to engine parameters; `max_tokens` resolved by the caller.
pub fn sampling_params(
    c: &CommonParams,
    max_tokens: usize,
    logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
    vocab: usize,
) -> Result<SamplingParams, ApiError> {
    let temperature = c.temperature.unwrap_or(1.0);
    field(
        "temperature",
        temperature.is_finite() && (0.0..=100.0).contains(&temperature),
        (),
    )?;
    let top_p = c.top_p.unwrap_or(1.0);
    field("top_p", top_p > 0.0 && top_p <= 1.0, ())?;
    let top_k = c.top_k.unwrap_or(-1);
    field("top_k", top_k >= -1 && top_k <= vocab as i64, ())?;
    let min_p = c.min_p.unwrap_or(0.0);
    field("min_p", (0.0..=1.0).contains(&min_p), ())?;
    let presence = c.presence_penalty.unwrap_or(0.0);
    field("presence_penalty", (-2.0..=2.0).contains(&presence), ())?;
    let frequency = c.frequency_penalty.unwrap_or(0.0);
    field("frequency_penalty", (-2.0..=2.0).contains(&frequency), ())?;
    let repetition = c.repetition_penalty.unwrap_or(1.0);
    field(
        "repetition_penalty",
        repetition > 0.0 && repetition <= 100.0,
        (),
    )?;
    let min_tokens = c.min_tokens.unwrap_or(0);
    field(
        "min_tokens",
        min_tokens >= 0 && min_tokens as usize <= max_tokens,
        (),
    )?;
    let mut logit_bias = Vec::new();
    if let Some(lb) = &c.logit_bias {
        for (k, &v) in lb {
            let id: u32 = k
                .parse()
                .ok()
                .filter(|&i: &u32| (i as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        "logit_bias",
                        format!("`logit_bias` key {k:?} is not a token id below {vocab}"),
                    )
                })?;
            field("logit_bias", (-100.0..=100.0).contains(&v), ())?;
            logit_bias.push((id, v));
        }
        logit_bias.sort_by_key(|(id, _)| *id);
    }
    let stop = c.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid_field(
            "stop",
            "stop strings must not be empty",
        ));
    }
    let stop_token_ids = c.stop_token_ids.clone().unwrap_or_default();
    field(
        "stop_token_ids",
        stop_token_ids.iter().all(|&t| (t as usize) < vocab),
        (),
    )?;
    Ok(SamplingParams {
        max_tokens,
        min_tokens: min_tokens as usize,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        stop_token_ids,
        stop,
        temperature,
        top_k: if top_k <= 0 { 0 } else { top_k as usize },
        top_p,
        min_p,
        repetition_penalty: repetition,
        presence_penalty: presence,
        frequency_penalty: frequency,
        logit_bias,
        seed: c.seed.map(|s| s as u64),
        logprobs,
        prompt_logprobs,
        skip_special_tokens: c.skip_special_tokens.unwrap_or(true),
    })
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

/// The length check vLLM makes, with its message.
pub fn check_length(
    prompt_len: usize,
    max_tokens: usize,
    max_model_len: usize,
) -> Result<(), ApiError> {
    if prompt_len == 0 {
        return Err(ApiError::invalid_field("prompt", "the prompt is empty"));
    }
    if prompt_len + max_tokens > max_model_len {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({prompt_len} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
            prompt_len + max_tokens
        ))
        .with_param("max_tokens"));
    }
    Ok(())
}

/// Engine requests of one HTTP request; every one not finished is aborted when this drops
/// (a client that disconnects drops the handler's future or the stream that owns it).
pub struct Submission {
    pub engine_ids: Vec<RequestId>,
    finished: Vec<bool>,
    state: Arc<AppState>,
    _admission: Admission,
}

impl Submission {
    pub fn mark_finished(&mut self, choice: usize) {
        if let Some(f) = self.finished.get_mut(choice) {
            *f = true;
        }
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        if let Some(l) = self.state.loaded.get() {
            for (id, done) in self.engine_ids.iter().zip(&self.finished) {
                if !done {
                    l.engine.abort(*id);
                    self.state
                        .metrics
                        .request_success
                        .with_label_values(&["abort"])
                        .inc();
                }
            }
        }
    }
}

/// Submits `prompts × n` engine requests (choice index = prompt * n + i; seeds offset by i).
pub fn submit(
    state: &Arc<AppState>,
    engine: &EngineHandle,
    prompts: &[Vec<u32>],
    n: usize,
    params: &SamplingParams,
) -> Result<(Submission, Vec<UnboundedReceiver<RequestOutput>>), ApiError> {
    let admission = state.admit(prompts.len() * n)?;
    let mut sub = Submission {
        engine_ids: Vec::new(),
        finished: Vec::new(),
        state: state.clone(),
        _admission: admission,
    };
    let mut rxs = Vec::new();
    for p in prompts {
        for i in 0..n {
            let mut params = params.clone();
            params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            let (id, rx) = engine.add_request(p.clone(), params)?;
            sub.engine_ids.push(id);
            sub.finished.push(false);
            rxs.push(rx);
        }
    }
    Ok((sub, rxs))
}

/// Per engine request: timings for the latency histograms and a log line.
pub struct RequestTimer {
    pub started: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    queue_secs: Option<f64>,
}

impl RequestTimer {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            first: None,
            last: None,
            queue_secs: None,
        }
    }

    pub fn on_output(&mut self, state: &AppState, o: &RequestOutput) {
        let now = Instant::now();
        if o.queue_secs.is_some() {
            self.queue_secs = o.queue_secs;
        }
        if !o.new_token_ids.is_empty() {
            match self.last {
                None => state
                    .metrics
                    .ttft
                    .observe((now - self.started).as_secs_f64()),
                Some(prev) => state.metrics.itl.observe((now - prev).as_secs_f64()),
            }
            self.first.get_or_insert(now);
            self.last = Some(now);
        }
        if let Some(f) = o.finished {
            let m = &state.metrics;
            m.e2e.observe(self.started.elapsed().as_secs_f64());
            if let Some(q) = self.queue_secs {
                m.queue_time.observe(q);
            }
            m.request_prompt_tokens
                .observe(o.usage.prompt_tokens as f64);
            m.request_generation_tokens
                .observe(o.usage.completion_tokens as f64);
            m.request_success.with_label_values(&[f.as_str()]).inc();
            tracing::info!(
                request_id = o.id,
                prompt_tokens = o.usage.prompt_tokens,
                generated_tokens = o.usage.completion_tokens,
                cached_tokens = o.usage.cached_tokens,
                ttft_s = self
                    .first
                    .map(|t| (t - self.started).as_secs_f64())
                    .unwrap_or(0.0),
                total_s = self.started.elapsed().as_secs_f64(),
                finish_reason = f.as_str(),
                "request finished"
            );
        }
    }
}

pub fn finish_str(f: Option<FinishReason>) -> Option<&'static str> {
    match f {
        Some(FinishReason::Stop) => Some("stop"),
        Some(FinishReason::Length) => Some("length"),
        // An aborted request that still answers (shutdown) reports "abort" as vLLM does.
        Some(FinishReason::Abort) => Some("abort"),
        None => None,
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn request_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
