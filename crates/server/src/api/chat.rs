//! `POST /v1/chat/completions`, and the server-sent-events driver both endpoints stream with.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrolm_engine::engine::RequestOutput;
use ferrolm_engine::sampling::TokenLogprob;
use ferrolm_engine::tokenizer::{ChatMessage, Tokenizer};
use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};

use super::completions::{collect_all, token_str};
use super::error::ApiError;
use super::generation::*;
use super::types::*;
use super::AppState;

/// Streams engine outputs as SSE chunks ending in `data: [DONE]`. A task feeds a bounded
/// channel; when the client goes away the channel closes, the task ends and the
/// submission's drop aborts whatever had not finished (queued requests included).
pub fn stream_sse<R, U>(
    state: Arc<AppState>,
    mut sub: Submission,
    rxs: Vec<UnboundedReceiver<RequestOutput>>,
    started: Instant,
    mut render: R,
    usage: Option<U>,
) -> Response
where
    R: FnMut(usize, &RequestOutput, bool) -> Vec<serde_json::Value> + Send + 'static,
    U: FnOnce(usize) -> serde_json::Value + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    let n = rxs.len();
    tokio::spawn(async move {
        let mut timers: Vec<RequestTimer> = (0..n).map(|_| RequestTimer::new(started)).collect();
        let mut seen = vec![false; n];
        let mut completion_tokens = vec![0usize; n];
        let mut streams = futures_util::stream::select_all(
            rxs.into_iter()
                .enumerate()
                .map(|(i, rx)| UnboundedReceiverStream::new(rx).map(move |o| (i, o))),
        );
        let mut finished = 0;
        while finished < n {
            let next = tokio::select! {
                next = streams.next() => next,
                _ = tx.closed() => return,
            };
            let Some((i, o)) = next else { break };
            timers[i].on_output(&state, &o);
            completion_tokens[i] = o.usage.completion_tokens;
            if o.finished.is_some() {
                finished += 1;
                sub.mark_finished(i);
            }
            for chunk in render(i, &o, !seen[i]) {
                if tx
                    .send(Ok(Event::default().data(chunk.to_string())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            seen[i] = true;
        }
        if let Some(u) = usage {
            let chunk = u(completion_tokens.iter().sum());
            if tx
                .send(Ok(Event::default().data(chunk.to_string())))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
        drop(sub);
    });
    Sse::new(ReceiverStream::new(rx)).into_response()
}

fn chat_logprobs(tok: &Tokenizer, lps: &[TokenLogprob]) -> ChatLogprobs {
    ChatLogprobs {
        content: lps
            .iter()
            .map(|l| {
                let s = token_str(tok, l.token_id);
                ChatTokenLogprob {
                    bytes: tok.token_bytes(l.token_id).to_vec(),
                    token: s,
                    logprob: l.logprob,
                    top_logprobs: l
                        .top
                        .iter()
                        .map(|&(t, lp)| TopLogprobOut {
                            token: token_str(tok, t),
                            logprob: lp,
                            bytes: tok.token_bytes(t).to_vec(),
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// Messages to template input: text parts joined by newlines; only text content is read.
fn flatten_messages(msgs: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid_field(
            "messages",
            "`messages` must not be empty",
        ));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
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

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let loaded = state.loaded()?;
    let (req, n): (ChatRequest, usize) = read_request(&state, body)?;
    let engine = &loaded.engine;
    let tok = engine.tokenizer.clone();
    let template = loaded.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "the model has no chat template; use /v1/completions or --chat-template",
        )
    })?;
    let messages = flatten_messages(&req.messages)?;
    let text = template.render(&messages, req.add_generation_prompt.unwrap_or(true))?;
    let prompt = tok.encode(&text, true)?;
    let max_model_len = engine.max_model_len;
    let max_tokens = match req.max_completion_tokens.or(req.common.max_tokens) {
        Some(m) if m < 1 => {
            return Err(ApiError::invalid_field(
                "max_tokens",
                format!("`max_tokens` must be at least 1, got {m}"),
            ))
        }
        Some(m) => m as usize,
        None => max_model_len.saturating_sub(prompt.len()).max(1),
    };
    check_length(prompt.len(), max_tokens, max_model_len)?;
    let top = req.top_logprobs.unwrap_or(0);
    if !(0..=MAX_LOGPROBS).contains(&top) {
        return Err(ApiError::invalid_field(
            "top_logprobs",
            format!("`top_logprobs` must be between 0 and {MAX_LOGPROBS}"),
        ));
    }
    if req.top_logprobs.is_some() && req.logprobs != Some(true) {
        return Err(ApiError::invalid_field(
            "top_logprobs",
            "`top_logprobs` needs `logprobs` set to true",
        ));
    }
    let logprobs = (req.logprobs == Some(true)).then_some(top as usize);
    let params = sampling_params(&req.common, max_tokens, logprobs, None, tok.vocab_size())?;
    let (mut sub, rxs) = submit(&state, engine, std::slice::from_ref(&prompt), n, &params)?;
    let id = request_id("chatcmpl");
    let created = unix_now();
    let model = state.served_model_name.clone();

    if req.common.stream {
        let include_usage = req.common.include_usage();
        let prompt_len = prompt.len();
        let chunk = {
            let id = id.clone();
            let model = model.clone();
            move |choices: Vec<ChatChunkChoice>, usage: Option<UsageOut>| {
                serde_json::to_value(ChatChunk {
                    id: id.clone(),
                    object: "chat.completion.chunk",
                    created,
                    model: model.clone(),
                    choices,
                    usage,
                })
                .unwrap_or_default()
            }
        };
        let usage_chunk = {
            let chunk = chunk.clone();
            move |completion_tokens: usize| {
                chunk(
                    Vec::new(),
                    Some(UsageOut {
                        prompt_tokens: prompt_len,
                        completion_tokens,
                        total_tokens: prompt_len + completion_tokens,
                    }),
                )
            }
        };
        let render = move |i: usize, o: &RequestOutput, first: bool| -> Vec<serde_json::Value> {
            let mut out = Vec::new();
            if first {
                out.push(chunk(
                    vec![ChatChunkChoice {
                        index: i,
                        delta: ChatDelta {
                            role: Some("assistant"),
                            content: Some(String::new()),
                        },
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                ));
            }
            if !o.text.is_empty() || o.finished.is_some() {
                let lp = logprobs.map(|_| chat_logprobs(&tok, &o.logprobs));
                out.push(chunk(
                    vec![ChatChunkChoice {
                        index: i,
                        delta: ChatDelta {
                            role: None,
                            content: (!o.text.is_empty()).then(|| o.text.clone()),
                        },
                        logprobs: lp,
                        finish_reason: finish_str(o.finished),
                    }],
                    None,
                ));
            }
            out
        };
        return Ok(stream_sse(
            state.clone(),
            sub,
            rxs,
            started,
            render,
            include_usage.then_some(usage_chunk),
        ));
    }

    let results = collect_all(&state, &mut sub, rxs, started).await;
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    for (i, r) in results.into_iter().enumerate() {
        let r = r?;
        completion_tokens += r.completion_tokens;
        choices.push(ChatChoice {
            index: i,
            message: ChatMessageOut {
                role: "assistant",
                content: r.text,
            },
            logprobs: logprobs.map(|_| chat_logprobs(&tok, &r.logprobs)),
            finish_reason: r.finish,
        });
    }
    Ok(Json(ChatResponse {
        id,
        object: "chat.completion",
        created,
        model,
        choices,
        usage: UsageOut {
            prompt_tokens: prompt.len(),
            completion_tokens,
            total_tokens: prompt.len() + completion_tokens,
        },
    })
    .into_response())
}
