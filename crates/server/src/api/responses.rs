//! `POST /v1/responses` and `GET /v1/responses/{id}` (OpenAI's Responses API, as vLLM serves
//! it): the input rendered through the chat template, one generation, the answer as a
//! response object or as the event stream the SDKs' helpers expect. Stored responses (the
//! default) are kept, a bounded number, for `previous_response_id` and retrieval.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrolm_engine::engine::RequestOutput;
use ferrolm_engine::tokenizer::ChatMessage;
use ferrolm_protocol::openai::{request_id, unix_now, CommonParams};
use ferrolm_protocol::responses::{
    output_message, response_object, ResponseHead, ResponsesRequest,
};
use ferrolm_protocol::validate::{
    apply_generation_defaults, from_json, refuse_ignored_fields, refuse_structured_fields,
    refuse_unsupported,
};
use serde_json::{json, Value};

use super::error::{from_engine, ApiError};
use super::response_store::{ResponseStore, Stored};
use super::state::{submit, AppState};
use super::stream::{collect_all, stream_sse};
use super::validate::{check_length, encode_prompt, parse_json, sampling_params, validate_prompts};

/// A response's status from its finish reason: cut by `max_output_tokens` is incomplete, an
/// abort (refused by the scheduler, shut down) failed; failed ones are not stored.
fn status_of(finish: &str) -> &'static str {
    match finish {
        "length" => "incomplete",
        "stop" => "completed",
        _ => "failed",
    }
}

fn store(state: &AppState) -> std::sync::MutexGuard<'_, ResponseStore> {
    // A panic while holding it leaves whole entries behind: the map is still usable.
    state.responses.lock().unwrap_or_else(|e| e.into_inner())
}

/// `GET /v1/responses/{id}`: a stored response.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match store(&state).map.get(&id) {
        Some(s) => Ok(Json(s.object.clone())),
        None => Err(ApiError::not_found(format!(
            "Response with id '{id}' not found."
        ))),
    }
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let loaded = state.loaded()?;
    let json = parse_json(&state, body)?;
    let req: ResponsesRequest = from_json(&json)?;
    state.check_model(req.model.as_deref())?;
    req.refuse_unsupported()?;
    // vLLM's extras that would change the answer and are not implemented (as on chat).
    refuse_ignored_fields(&json, true)?;
    refuse_structured_fields(&json)?;
    let template = loaded.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "the model has no chat template; use /v1/completions or --chat-template",
        )
    })?;
    let history = match &req.previous_response_id {
        Some(prev) => match store(&state).map.get(prev) {
            Some(s) => s.conversation.clone(),
            None => {
                return Err(ApiError::not_found(format!(
                    "Previous response with id '{prev}' not found."
                ))
                .with_param("previous_response_id"))
            }
        },
        None => Vec::new(),
    };
    let messages = req.messages(&history)?;
    let text = template.render(&messages, true).map_err(from_engine)?;
    let engine = &loaded.engine;
    let tok = engine.tokenizer.clone();
    let prompt = encode_prompt(&tok, text, engine.max_model_len, "input").await?;
    let max_tokens = match req.max_output_tokens {
        Some(m) if m < 1 => {
            return Err(ApiError::invalid_field(
                "max_output_tokens",
                format!("`max_output_tokens` must be at least 1, got {m}"),
            ))
        }
        Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
        None => engine.max_model_len.saturating_sub(prompt.len()).max(1),
    };
    let max_tokens = loaded
        .generation_defaults
        .max_tokens
        .map_or(max_tokens, |cap| max_tokens.min(cap.max(1)));
    // The sampling fields (OpenAI's and vLLM's extras: top_k, min_p, penalties, seed, stop,
    // ...), read from the body as the other endpoints read them.
    let mut common: CommonParams = from_json(&json)?;
    // What the other endpoints refuse (n, best_of, response_format, ...) is refused here too;
    // tools and tool_choice are the Responses API's own (checked above).
    let mut shared = common.clone();
    (shared.tools, shared.tool_choice) = (None, None);
    refuse_unsupported(&shared, false)?;
    if common.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_field(
            "n",
            "`n` is not a Responses API field",
        ));
    }
    if common.prompt_logprobs.is_some() {
        return Err(ApiError::invalid_field(
            "prompt_logprobs",
            "`prompt_logprobs` is not returned by the Responses API",
        ));
    }
    check_length(prompt.len(), max_tokens, engine.max_model_len)
        .map_err(|e| e.with_param("max_output_tokens"))?;
    apply_generation_defaults(&mut common, &loaded.generation_defaults);
    let params = sampling_params(&common, max_tokens, None, None)?;
    let valid = validate_prompts(
        engine,
        std::slice::from_ref(&prompt),
        &params,
        &[("prompt", "input"), ("max_tokens", "max_output_tokens")],
    )?;
    let id = format!("resp_{}", request_id("").trim_start_matches('-'));
    let trace = state.trace(&headers, &id, &params, 1);
    let (mut sub, rxs) = submit(&state, engine, &valid, 1, trace)?;
    let msg_id = format!("msg_{}", request_id("").trim_start_matches('-'));
    let created_at = unix_now();
    let model = state.served_model_name.clone();
    let keep = req.store.unwrap_or(true);
    // The conversation a stored response ends: without this request's instructions (they
    // are not carried over to the next turn), with the answer.
    let conversation_with =
        move |mut messages: Vec<ChatMessage>, has_instructions: bool, answer: &str| {
            if has_instructions {
                messages.remove(0);
            }
            messages.push(ChatMessage::new("assistant", answer));
            messages
        };

    if req.stream {
        let state2 = state.clone();
        let mut seq = 0usize;
        let mut text = String::new();
        let render = move |_: usize, o: &RequestOutput, first: bool| -> Vec<Value> {
            let h = ResponseHead {
                id: &id,
                created_at,
                model: &model,
                req: &req,
            };
            let mut events = Vec::new();
            let mut push = |mut e: Value| {
                e["sequence_number"] = json!(seq);
                seq += 1;
                events.push(e);
            };
            if first {
                let r = response_object(&h, "in_progress", Vec::new(), None);
                push(json!({"type": "response.created", "response": r}));
                push(json!({"type": "response.in_progress", "response": r}));
                push(
                    json!({"type": "response.output_item.added", "output_index": 0,
                    "item": {"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}}),
                );
                push(
                    json!({"type": "response.content_part.added", "item_id": msg_id, "output_index": 0,
                    "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
                );
            }
            if !o.text.is_empty() {
                text.push_str(&o.text);
                push(
                    json!({"type": "response.output_text.delta", "item_id": msg_id, "output_index": 0,
                    "content_index": 0, "delta": o.text, "logprobs": []}),
                );
            }
            if let Some(f) = &o.finished {
                let status = status_of(f.as_str());
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                push(
                    json!({"type": "response.output_text.done", "item_id": msg_id, "output_index": 0,
                    "content_index": 0, "text": text, "logprobs": []}),
                );
                push(
                    json!({"type": "response.content_part.done", "item_id": msg_id, "output_index": 0,
                    "content_index": 0, "part": part}),
                );
                let item = output_message(&msg_id, &text, status);
                push(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
                let u = &o.usage;
                let usage = Some((u.prompt_tokens, u.completion_tokens, u.cached_tokens));
                let r = response_object(&h, status, vec![item], usage);
                if keep && status != "failed" {
                    let conversation =
                        conversation_with(messages.clone(), req.instructions.is_some(), &text);
                    store(&state2).insert(
                        id.clone(),
                        Stored {
                            object: r.clone(),
                            conversation,
                        },
                    );
                }
                let kind = format!("response.{status}");
                push(json!({"type": kind, "response": r}));
            }
            events
        };
        let none: Option<fn(usize) -> Value> = None;
        return Ok(stream_sse(state.clone(), sub, rxs, started, render, none));
    }

    let mut results = collect_all(&state, &mut sub, rxs, started).await;
    let r = results.remove(0)?;
    let status = status_of(r.finish.unwrap_or("abort"));
    let h = ResponseHead {
        id: &id,
        created_at,
        model: &model,
        req: &req,
    };
    let usage = Some((r.prompt_tokens, r.completion_tokens, r.cached_tokens));
    let object = response_object(
        &h,
        status,
        vec![output_message(&msg_id, &r.text, status)],
        usage,
    );
    if keep && status != "failed" {
        let conversation = conversation_with(messages, req.instructions.is_some(), &r.text);
        store(&state).insert(
            id.clone(),
            Stored {
                object: object.clone(),
                conversation,
            },
        );
    }
    Ok(Json(object).into_response())
}
