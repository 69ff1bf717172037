//! What completions and chat share to answer from engine outputs: the server-sent-events
//! driver, reading every choice to its end, the usage both report, and OpenAI's renderings
//! of tokens and log-probs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use ferrolm_engine::engine::RequestOutput;
use ferrolm_engine::sampling::TokenLogprob;
use ferrolm_engine::tokenizer::Tokenizer;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};

use super::error::ApiError;
use super::metrics::RequestTimer;
use super::protocol::{
    ChatLogprobs, ChatTokenLogprob, ChoicesResponse, CompletionLogprobs, TopLogprobOut, UsageOut,
};
use super::state::{AppState, Submission};

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
            timers[i].on_output(&state.metrics, &o);
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

/// The endpoint's chunk from choices and usage: every chunk of a stream, the usage chunk
/// included, carries the stream's one id, its object name, `created` and the model.
pub fn chunk_builder<C: Serialize + Send + 'static>(
    id: String,
    object: &'static str,
    created: u64,
    model: String,
) -> impl Fn(Vec<C>, Option<UsageOut>) -> serde_json::Value + Clone + Send + 'static {
    move |choices: Vec<C>, usage: Option<UsageOut>| {
        serde_json::to_value(ChoicesResponse {
            id: id.clone(),
            object,
            created,
            model: model.clone(),
            choices,
            usage,
        })
        .unwrap_or_default()
    }
}

/// The last chunk of a stream when `stream_options.include_usage` asks for it: no choices,
/// and the usage of every choice. `chunk` builds the endpoint's chunk from choices and usage.
pub fn usage_chunk<C: 'static>(
    include_usage: bool,
    prompt_tokens: usize,
    chunk: impl FnOnce(Vec<C>, Option<UsageOut>) -> serde_json::Value + Send + 'static,
) -> Option<impl FnOnce(usize) -> serde_json::Value + Send + 'static> {
    include_usage.then_some(move |completion_tokens: usize| {
        chunk(
            Vec::new(),
            Some(UsageOut::new(prompt_tokens, completion_tokens)),
        )
    })
}

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
    mut rx: UnboundedReceiver<RequestOutput>,
    started: Instant,
) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
    let mut timer = RequestTimer::new(started);
    while let Some(o) = rx.recv().await {
        timer.on_output(&state.metrics, &o);
        c.text.push_str(&o.text);
        c.token_ids.extend(&o.new_token_ids);
        c.logprobs.extend(o.logprobs.iter().cloned());
        if o.prompt_logprobs.is_some() {
            c.prompt_logprobs = o.prompt_logprobs.clone();
        }
        c.prompt_tokens = o.usage.prompt_tokens;
        c.completion_tokens = o.usage.completion_tokens;
        if o.finished.is_some() {
            c.finish = o.finished.as_ref().map(|f| f.as_str());
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
    rxs: Vec<UnboundedReceiver<RequestOutput>>,
    started: Instant,
) -> Vec<Result<Collected, ApiError>> {
    let results =
        futures_util::future::join_all(rxs.into_iter().map(|rx| collect(state, rx, started))).await;
    for i in 0..results.len() {
        sub.mark_finished(i);
    }
    results
}

/// The choices of a non-streamed answer, built from what each produced (in order), and the
/// completion tokens of them all; the first choice that failed fails the request.
pub fn build_choices<C>(
    results: Vec<Result<Collected, ApiError>>,
    mut build: impl FnMut(usize, Collected) -> C,
) -> Result<(Vec<C>, usize), ApiError> {
    let mut choices = Vec::with_capacity(results.len());
    let mut completion_tokens = 0;
    for (i, r) in results.into_iter().enumerate() {
        let r = r?;
        completion_tokens += r.completion_tokens;
        choices.push(build(i, r));
    }
    Ok((choices, completion_tokens))
}

fn token_str(tok: &Tokenizer, id: u32) -> String {
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

/// OpenAI's chat log-probs object for a run of tokens.
pub fn chat_logprobs(tok: &Tokenizer, lps: &[TokenLogprob]) -> ChatLogprobs {
    let entry = |id: u32, logprob: f32| TopLogprobOut {
        token: token_str(tok, id),
        logprob,
        bytes: tok.token_bytes(id).to_vec(),
    };
    ChatLogprobs {
        content: lps
            .iter()
            .map(|l| ChatTokenLogprob {
                chosen: entry(l.token_id, l.logprob),
                top_logprobs: l.top.iter().map(|&(t, lp)| entry(t, lp)).collect(),
            })
            .collect(),
    }
}
