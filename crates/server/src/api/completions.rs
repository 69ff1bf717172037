//! `POST /v1/completions`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrolm_engine::engine::RequestOutput;
use ferrolm_engine::sampling::TokenLogprob;

use super::error::ApiError;
use super::state::{submit, AppState};
use super::stream::{
    build_choices, chunk_builder, collect_all, completion_logprobs, prompt_logprobs_json,
    stream_sse, usage_chunk,
};
use super::validate::{
    check_length, encode_prompt, logprobs_count, max_tokens_or, read_request, sampling_params,
    validate_prompts,
};
use ferrolm_protocol::openai::{
    request_id, unix_now, CompletionChoice, CompletionLogprobs, CompletionRequest,
    CompletionResponse, Prompt, UsageOut,
};

pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (started, loaded, tok, req, n) = read_request::<CompletionRequest>(&state, body)?;
    let max_model_len = loaded.engine.max_model_len;
    // Echo returns a text prompt as sent (vLLM's `request.prompt`), token prompts decoded.
    let echo_texts: Vec<Option<String>> = match &req.prompt {
        Some(Prompt::Text(s)) => vec![Some(s.clone())],
        Some(Prompt::Texts(v)) => v.iter().cloned().map(Some).collect(),
        _ => Vec::new(),
    };
    let prompts: Vec<Vec<u32>> = match req.prompt.clone() {
        None => return Err(ApiError::invalid_field("prompt", "`prompt` is required")),
        Some(Prompt::Text(s)) => vec![encode_prompt(&tok, s, max_model_len, "prompt").await?],
        Some(Prompt::Texts(v)) => {
            let mut out = Vec::with_capacity(v.len());
            for s in v {
                out.push(encode_prompt(&tok, s, max_model_len, "prompt").await?);
            }
            out
        }
        Some(Prompt::Tokens(v)) => vec![v],
        Some(Prompt::TokenBatches(v)) => v,
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid_field(
            "prompt",
            "`prompt` must not be an empty list",
        ));
    }
    let echo_text = |i: usize| match echo_texts.get(i) {
        Some(Some(t)) => t.clone(),
        _ => tok.decode(&prompts[i], false),
    };
    // vLLM's echo-only form: `max_tokens: 0` with `echo` scores the prompt and generates
    // nothing (the engine runs one token, which is dropped).
    let echo_only = req.echo && req.common.max_tokens == Some(0);
    let max_tokens = match echo_only {
        true => 1,
        false => max_tokens_or(req.common.max_tokens, 16)?,
    };
    // generation_config.json's max_new_tokens caps what any request gets (vLLM's
    // `get_max_tokens`).
    let max_tokens = loaded
        .generation_defaults
        .max_tokens
        .map_or(max_tokens, |cap| max_tokens.min(cap.max(1)));
    for p in &prompts {
        check_length(p.len(), max_tokens, loaded.engine.max_model_len)?;
    }
    let logprobs = logprobs_count("logprobs", req.logprobs)?;
    let prompt_logprobs = match logprobs_count("prompt_logprobs", req.common.prompt_logprobs)? {
        Some(k) => Some(k),
        None if req.echo => logprobs,
        None => None,
    };
    let params = sampling_params(&req.common, max_tokens, logprobs, prompt_logprobs)?;
    let valid = validate_prompts(&loaded.engine, &prompts, &params, &[])?;
    let id = request_id("cmpl");
    let trace = state.trace(&headers, &id, &params, n);
    let (mut sub, rxs) = submit(&state, &loaded.engine, &valid, n, trace)?;
    let created = unix_now();
    let model = state.served_model_name.clone();
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();

    if req.common.stream {
        let echo = req.echo;
        let prompts_text: Vec<String> = (0..prompts.len()).map(|i| echo_text(i)).collect();
        // Every chunk, the usage chunk included, carries the stream's one id.
        let chunk = chunk_builder::<CompletionChoice>(
            id.clone(),
            "text_completion",
            created,
            model.clone(),
        );
        let usage =
            usage_chunk(req.common.include_usage(), prompt_tokens, chunk.clone()).map(|u| {
                move |completion_tokens: usize| u(if echo_only { 0 } else { completion_tokens })
            });
        let prompts_ids = prompts.clone();
        // Each choice's text so far, in characters: its log-probs' `text_offset`s.
        let mut offsets = vec![0usize; prompts.len() * n];
        let render =
            move |choice: usize, o: &RequestOutput, first: bool| -> Vec<serde_json::Value> {
                let mut text = String::new();
                let mut lp: Option<CompletionLogprobs> = None;
                if first && echo {
                    let prompt = &prompts_ids[choice / n];
                    text.push_str(&prompts_text[choice / n]);
                    if logprobs.is_some() {
                        let pl = o.prompt_logprobs.clone().unwrap_or_default();
                        let items: Vec<Option<&TokenLogprob>> = (0..prompt.len())
                            .map(|j| pl.get(j).and_then(|x| x.as_ref()))
                            .collect();
                        lp = Some(completion_logprobs(&tok, &items, prompt, 0));
                    }
                }
                // Generated tokens' offsets run on from the echoed prompt tokens' (as vLLM's:
                // a BOS among them has width there though the echoed text lacks it).
                let offset = lp
                    .as_ref()
                    .map_or(offsets[choice] + text.chars().count(), end_offset);
                if !echo_only {
                    text.push_str(&o.text);
                    if logprobs.is_some() && !o.logprobs.is_empty() {
                        let items: Vec<Option<&TokenLogprob>> =
                            o.logprobs.iter().map(Some).collect();
                        let more = completion_logprobs(&tok, &items, &o.new_token_ids, offset);
                        extend_logprobs(lp.get_or_insert_with(CompletionLogprobs::default), more);
                    }
                }
                offsets[choice] = match &lp {
                    Some(l) if !l.tokens.is_empty() => end_offset(l),
                    _ => offsets[choice] + text.chars().count(),
                };
                vec![chunk(
                    vec![CompletionChoice {
                        index: choice,
                        text,
                        logprobs: lp,
                        // Echo-only ends by its length whatever its dropped token was.
                        finish_reason: o.finished.as_ref().map(|f| {
                            if echo_only {
                                "length"
                            } else {
                                f.as_str()
                            }
                        }),
                        prompt_logprobs: None,
                    }],
                    None,
                )]
            };
        return Ok(stream_sse(state.clone(), sub, rxs, started, render, usage));
    }

    let results = collect_all(&state, &mut sub, rxs, started).await;
    let (choices, completion_tokens) = build_choices(results, |i, r| {
        let prompt = &prompts[i / n];
        let mut text = String::new();
        let mut lp_out = None;
        // vLLM's prompt_logprobs field, when asked for by name.
        let prompt_lp = req.common.prompt_logprobs.is_some().then(|| {
            let pl = r.prompt_logprobs.as_deref().unwrap_or_default();
            prompt_logprobs_json(&tok, prompt, pl)
        });
        if req.echo {
            let ptext = echo_text(i / n);
            if logprobs.is_some() {
                let pl = r.prompt_logprobs.clone().unwrap_or_default();
                let items: Vec<Option<&TokenLogprob>> = (0..prompt.len())
                    .map(|j| pl.get(j).and_then(|x| x.as_ref()))
                    .collect();
                lp_out = Some(completion_logprobs(&tok, &items, prompt, 0));
            }
            text.push_str(&ptext);
        }
        if echo_only {
            // The prompt scored, nothing generated.
            return CompletionChoice {
                index: i,
                text,
                logprobs: lp_out,
                finish_reason: Some("length"),
                prompt_logprobs: prompt_lp,
            };
        }
        if logprobs.is_some() {
            let items: Vec<Option<&TokenLogprob>> = r.logprobs.iter().map(Some).collect();
            let start = lp_out.as_ref().map_or(text.chars().count(), end_offset);
            let more = completion_logprobs(&tok, &items, &r.token_ids, start);
            extend_logprobs(lp_out.get_or_insert_with(CompletionLogprobs::default), more);
        }
        text.push_str(&r.text);
        CompletionChoice {
            index: i,
            text,
            logprobs: lp_out,
            finish_reason: r.finish,
            prompt_logprobs: prompt_lp,
        }
    })?;
    let completion_tokens = if echo_only { 0 } else { completion_tokens };
    Ok(Json(CompletionResponse {
        id,
        object: "text_completion",
        created,
        model,
        choices,
        usage: Some(UsageOut::new(prompt_tokens, completion_tokens)),
        prompt_logprobs: None,
    })
    .into_response())
}

/// Where the next token's text starts after `lp`'s tokens.
fn end_offset(lp: &CompletionLogprobs) -> usize {
    match (lp.text_offset.last(), lp.tokens.last()) {
        (Some(o), Some(t)) => o + t.chars().count(),
        _ => 0,
    }
}

/// Appends `more`'s tokens to `lp`.
fn extend_logprobs(lp: &mut CompletionLogprobs, more: CompletionLogprobs) {
    lp.text_offset.extend(more.text_offset);
    lp.tokens.extend(more.tokens);
    lp.token_logprobs.extend(more.token_logprobs);
    lp.top_logprobs.extend(more.top_logprobs);
}
