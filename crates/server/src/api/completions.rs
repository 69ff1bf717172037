//! `POST /v1/completions`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrolm_engine::engine::RequestOutput;
use ferrolm_engine::sampling::TokenLogprob;
use ferrolm_engine::tokenizer::Tokenizer;

use super::error::ApiError;
use super::generation::*;
use super::types::*;
use super::AppState;

/// What one choice produced.
#[derive(Default)]
pub struct Collected {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    pub finish: Option<&'static str>,
    pub completion_tokens: usize,
    pub prompt_tokens: usize,
}

/// Reads one engine stream to its end.
pub async fn collect(
    state: &AppState,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<RequestOutput>,
    started: Instant,
) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
    let mut timer = RequestTimer::new(started);
    while let Some(o) = rx.recv().await {
        timer.on_output(state, &o);
        c.text.push_str(&o.text);
        c.token_ids.extend(&o.new_token_ids);
        c.logprobs.extend(o.logprobs.iter().cloned());
        if o.prompt_logprobs.is_some() {
            c.prompt_logprobs = o.prompt_logprobs.clone();
        }
        c.prompt_tokens = o.usage.prompt_tokens;
        c.completion_tokens = o.usage.completion_tokens;
        if o.finished.is_some() {
            c.finish = finish_str(o.finished);
            return Ok(c);
        }
    }
    Err(ApiError::unavailable(
        "the engine stopped before the request finished",
    ))
}

/// Reads every choice's stream to its end (concurrently) and marks them finished, so the
/// submission's drop aborts nothing.
pub async fn collect_all(
    state: &AppState,
    sub: &mut Submission,
    rxs: Vec<tokio::sync::mpsc::UnboundedReceiver<RequestOutput>>,
    started: Instant,
) -> Vec<Result<Collected, ApiError>> {
    let results =
        futures_util::future::join_all(rxs.into_iter().map(|rx| collect(state, rx, started))).await;
    for i in 0..results.len() {
        sub.mark_finished(i);
    }
    results
}

pub fn token_str(tok: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(tok.token_bytes(id)).into_owned()
}

/// OpenAI's completions log-probs object for a run of tokens, offsets counted from `offset`.
pub fn completion_logprobs(
    tok: &Tokenizer,
    items: &[Option<&TokenLogprob>],
    ids: &[u32],
    offset: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut pos = offset;
    for (item, &id) in items.iter().zip(ids) {
        let s = token_str(tok, id);
        out.text_offset.push(pos);
        pos += s.chars().count();
        out.tokens.push(s);
        out.token_logprobs.push(item.map(|l| l.logprob));
        out.top_logprobs.push(item.map(|l| {
            let mut m: HashMap<String, f32> = l
                .top
                .iter()
                .map(|&(t, lp)| (token_str(tok, t), lp))
                .collect();
            m.entry(token_str(tok, l.token_id)).or_insert(l.logprob);
            m
        }));
    }
    out
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let loaded = state.loaded()?;
    let (req, n): (CompletionRequest, usize) = read_request(&state, body)?;
    let engine = &loaded.engine;
    let tok = engine.tokenizer.clone();
    let vocab = tok.vocab_size();
    let prompts: Vec<Vec<u32>> = match req.prompt.clone() {
        None => return Err(ApiError::invalid_field("prompt", "`prompt` is required")),
        Some(Prompt::Text(s)) => vec![tok.encode(&s, true)?],
        Some(Prompt::Texts(v)) => v
            .iter()
            .map(|s| tok.encode(s, true))
            .collect::<Result<_, _>>()?,
        Some(Prompt::Tokens(v)) => vec![v],
        Some(Prompt::TokenBatches(v)) => v,
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid_field(
            "prompt",
            "`prompt` must not be an empty list",
        ));
    }
    if prompts.iter().flatten().any(|&t| t as usize >= vocab) {
        return Err(ApiError::invalid_field(
            "prompt",
            format!("token ids must be below the vocabulary size {vocab}"),
        ));
    }
    let max_tokens = req.common.max_tokens.unwrap_or(16);
    if max_tokens < 1 {
        return Err(ApiError::invalid_field(
            "max_tokens",
            format!("`max_tokens` must be at least 1, got {max_tokens}"),
        ));
    }
    let max_tokens = max_tokens as usize;
    for p in &prompts {
        check_length(p.len(), max_tokens, engine.max_model_len)?;
    }
    let logprobs = match req.logprobs {
        Some(k) if !(0..=MAX_LOGPROBS).contains(&k) => {
            return Err(ApiError::invalid_field(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_LOGPROBS}"),
            ))
        }
        k => k.map(|k| k as usize),
    };
    let prompt_logprobs = match req.common.prompt_logprobs {
        Some(k) if !(0..=MAX_LOGPROBS).contains(&k) => {
            return Err(ApiError::invalid_field(
                "prompt_logprobs",
                format!("`prompt_logprobs` must be between 0 and {MAX_LOGPROBS}"),
            ))
        }
        Some(k) => Some(k as usize),
        None if req.echo => logprobs,
        None => None,
    };
    let params = sampling_params(&req.common, max_tokens, logprobs, prompt_logprobs, vocab)?;
    let (mut sub, rxs) = submit(&state, engine, &prompts, n, &params)?;
    let id = request_id("cmpl");
    let created = unix_now();
    let model = state.served_model_name.clone();

    if req.common.stream {
        let include_usage = req.common.include_usage();
        let echo = req.echo;
        let prompts_text: Vec<String> = prompts.iter().map(|p| tok.decode(p, false)).collect();
        let prompt_total: usize = prompts.iter().map(Vec::len).sum();
        // The usage chunk carries the same id as the stream's other chunks.
        let usage_id = id.clone();
        let render =
            move |choice: usize, o: &RequestOutput, first: bool| -> Vec<serde_json::Value> {
                let mut text = String::new();
                if first && echo {
                    text.push_str(&prompts_text[choice / n]);
                }
                text.push_str(&o.text);
                let lp = (logprobs.is_some() && !o.logprobs.is_empty()).then(|| {
                    let items: Vec<Option<&TokenLogprob>> = o.logprobs.iter().map(Some).collect();
                    completion_logprobs(&tok, &items, &o.new_token_ids, 0)
                });
                vec![serde_json::to_value(CompletionResponse {
                    id: id.clone(),
                    object: "text_completion",
                    created,
                    model: model.clone(),
                    choices: vec![CompletionChoice {
                        index: choice,
                        text,
                        logprobs: lp,
                        finish_reason: finish_str(o.finished),
                    }],
                    usage: None,
                })
                .unwrap_or_default()]
            };
        let usage_chunk = {
            let id = usage_id;
            let model = state.served_model_name.clone();
            move |completion_tokens: usize| {
                serde_json::json!({
                    "id": id, "object": "text_completion", "created": created, "model": model, "choices": [],
                    "usage": {"prompt_tokens": prompt_total, "completion_tokens": completion_tokens, "total_tokens": prompt_total + completion_tokens}
                })
            }
        };
        return Ok(super::chat::stream_sse(
            state.clone(),
            sub,
            rxs,
            started,
            render,
            include_usage.then_some(usage_chunk),
        ));
    }

    let results = collect_all(&state, &mut sub, rxs, started).await;
    let mut choices = Vec::with_capacity(results.len());
    let mut completion_tokens = 0;
    for (i, r) in results.into_iter().enumerate() {
        let r = r?;
        completion_tokens += r.completion_tokens;
        let prompt = &prompts[i / n];
        let mut text = String::new();
        let mut lp_out = None;
        if req.echo {
            let ptext = tok.decode(prompt, false);
            if logprobs.is_some() {
                let pl = r.prompt_logprobs.clone().unwrap_or_default();
                let items: Vec<Option<&TokenLogprob>> = (0..prompt.len())
                    .map(|j| pl.get(j).and_then(|x| x.as_ref()))
                    .collect();
                lp_out = Some(completion_logprobs(&tok, &items, prompt, 0));
            }
            text.push_str(&ptext);
        }
        if logprobs.is_some() {
            let items: Vec<Option<&TokenLogprob>> = r.logprobs.iter().map(Some).collect();
            let more = completion_logprobs(&tok, &items, &r.token_ids, text.chars().count());
            let lp = lp_out.get_or_insert_with(CompletionLogprobs::default);
            lp.text_offset.extend(more.text_offset);
            lp.tokens.extend(more.tokens);
            lp.token_logprobs.extend(more.token_logprobs);
            lp.top_logprobs.extend(more.top_logprobs);
        }
        text.push_str(&r.text);
        choices.push(CompletionChoice {
            index: i,
            text,
            logprobs: lp_out,
            finish_reason: r.finish,
        });
    }
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    Ok(Json(CompletionResponse {
        id,
        object: "text_completion",
        created,
        model: state.served_model_name.clone(),
        choices,
        usage: Some(UsageOut {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }),
    })
    .into_response())
}
