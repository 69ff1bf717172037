//! What completions and chat share to answer from engine outputs: the server-sent-events
//! driver, reading every choice to its end, the usage both report, and OpenAI's renderings
//! of tokens and log-probs.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use ferrolm_engine::engine::RequestOutput;
use ferrolm_engine::sampling::TokenLogprob;
use ferrolm_engine::tokenizer::Tokenizer;
use ferrolm_protocol::sse;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};

use super::error::ApiError;
use super::metrics::RequestTimer;
use super::state::{AppState, Submission};
use ferrolm_protocol::openai::{
    ChatLogprobs, ChatTokenLogprob, ChoicesResponse, CompletionLogprobs, TopLogprobOut, UsageOut,
};

/// Streams engine outputs as SSE chunks ending in `data: [DONE]`. A task reads the engine's
/// outputs as they come (however slowly the client reads, so the request's admission slots
/// go back as soon as the engine is done with it) and feeds a bounded channel the response
/// body reads; when the client goes away the channel closes, the task ends and the
/// submission's drop aborts whatever had not finished (queued requests included). Cut by the
/// drain timeout at shutdown, the stream ends with an error event, without `[DONE]`.
pub fn stream_sse<R, U>(
    state: Arc<AppState>,
    sub: Submission,
    rxs: Vec<UnboundedReceiver<RequestOutput>>,
    started: Instant,
    mut render: R,
    usage: Option<U>,
) -> Response
where
    R: FnMut(usize, &RequestOutput, bool) -> Vec<serde_json::Value> + Send + 'static,
    U: FnOnce(usize) -> serde_json::Value + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(64);
    let n = rxs.len();
    let mut drain = state.drain_expired.subscribe();
    let mut timers: Vec<_> = (0..n).map(|i| sub.timer(i, started)).collect();
    tokio::spawn(async move {
        let mut sub = Some(sub);
        let mut usage = usage;
        let mut seen = vec![false; n];
        let mut completion_tokens = vec![0usize; n];
        let mut streams = futures_util::stream::select_all(
            rxs.into_iter()
                .enumerate()
                .map(|(i, rx)| UnboundedReceiverStream::new(rx).map(move |o| (i, o))),
        );
        // Events rendered and not yet taken by the response body.
        let mut queue: VecDeque<String> = VecDeque::new();
        let mut finished = 0;
        // Every engine output has been read (and the closing events queued).
        let mut ended = false;
        while !(ended && queue.is_empty()) {
            tokio::select! {
                next = streams.next(), if !ended => {
                    let Some((i, o)) = next.filter(|_| finished < n) else {
                        // All finished (or the engine went away): close the stream.
                        if let Some(s) = sub.as_mut() {
                            s.release_admission();
                        }
                        if let Some(u) = usage.take() {
                            queue.push_back(u(completion_tokens.iter().sum()).to_string());
                        }
                        queue.push_back(sse::DONE.to_string());
                        ended = true;
                        continue;
                    };
                    if let Some(e) = &o.error {
                        // The engine failed this choice: the stream ends with why.
                        sub = None;
                        queue.push_back(engine_failed(e).to_json().to_string());
                        ended = true;
                        continue;
                    }
                    timers[i].on_output(&state.metrics, &o);
                    completion_tokens[i] = o.usage.completion_tokens;
                    if o.finished.is_some() {
                        finished += 1;
                        if let Some(s) = sub.as_mut() {
                            s.mark_finished(i);
                            if finished == n {
                                s.release_admission();
                            }
                        }
                    }
                    queue.extend(render(i, &o, !seen[i]).iter().map(|c| c.to_string()));
                    seen[i] = true;
                }
                permit = tx.reserve(), if !queue.is_empty() => {
                    let (Ok(permit), Some(event)) = (permit, queue.pop_front()) else {
                        return;
                    };
                    permit.send(Ok(sse::event(&event)));
                }
                _ = tx.closed() => return,
                _ = drain_expired(&mut drain), if sub.is_some() => {
                    // Abort what is unfinished now; the client hears why the text stops.
                    sub = None;
                    queue.push_back(
                        ApiError::unavailable(
                            "the server shut down before this stream finished; the text is cut",
                        )
                        .to_json()
                        .to_string(),
                    );
                    ended = true;
                }
            }
        }
        drop(sub);
    });
    let body = Body::from_stream(ReceiverStream::new(rx));
    let headers = [
        (CONTENT_TYPE, sse::CONTENT_TYPE),
        (CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

/// Resolves once the drain timeout has expired (never if its sender is gone).
async fn drain_expired(rx: &mut tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|&expired| expired).await.is_err() {
        std::future::pending::<()>().await;
    }
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
            prompt_logprobs: None,
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
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// Reads one engine stream to its end.
pub async fn collect(
    state: &AppState,
    mut rx: UnboundedReceiver<RequestOutput>,
    mut timer: RequestTimer,
) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
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
        c.cached_tokens = o.usage.cached_tokens;
        if let Some(e) = &o.error {
            return Err(engine_failed(e));
        }
        if o.finished.is_some() {
            c.finish = o.finished.as_ref().map(|f| f.as_str());
            return Ok(c);
        }
    }
    Err(ApiError::unavailable(
        "the engine stopped before the request finished",
    ))
}

/// What a client hears of a request the engine failed (the server itself goes on).
fn engine_failed(why: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        format!("the request failed in the engine: {why}"),
    )
}

/// Reads every choice's stream to its end (concurrently) and marks them finished, so the
/// submission's drop aborts nothing.
pub async fn collect_all(
    state: &AppState,
    sub: &mut Submission,
    rxs: Vec<UnboundedReceiver<RequestOutput>>,
    started: Instant,
) -> Vec<Result<Collected, ApiError>> {
    let timers: Vec<_> = (0..rxs.len()).map(|i| sub.timer(i, started)).collect();
    let results = futures_util::future::join_all(
        rxs.into_iter()
            .zip(timers)
            .map(|(rx, timer)| collect(state, rx, timer)),
    )
    .await;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use ferrolm_engine::request::FinishReason;

    use super::*;
    use crate::api::state::test_support;

    /// A client that never reads its stream: the engine's outputs (far more than the body's
    /// channel holds) are still read as they come, so the request's admission slot goes back
    /// once the engine has finished it, and the next request is admitted.
    #[tokio::test]
    async fn a_stalled_reader_does_not_keep_its_admission() {
        let state = test_support::state(1);
        let sub = test_support::submission(&state, 1);
        assert!(state.admit(1).is_err(), "the one slot is taken");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let render =
            |_: usize, o: &RequestOutput, _: bool| vec![serde_json::json!({"text": o.text})];
        let response = stream_sse(
            state.clone(),
            sub,
            vec![rx],
            Instant::now(),
            render,
            None::<fn(usize) -> serde_json::Value>,
        );
        for i in 0..1000 {
            let finished = (i == 999).then_some(FinishReason::Length);
            let _ = tx.send(RequestOutput {
                text: "x".repeat(100),
                finished,
                ..Default::default()
            });
        }
        // Bounded wait (not a measure of speed): the task runs as soon as this one yields.
        let t0 = Instant::now();
        while state.in_flight.load(Ordering::Acquire) != 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the slot was never released"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(state.admit(1).is_ok());
        drop(response);
    }
}

/// vLLM's `prompt_logprobs`: one entry per prompt token, `null` for the first (nothing
/// predicts it), else an object keyed by token id (as a string) holding the prompt token's
/// own `logprob`, `rank` and `decoded_token`, then its top alternatives' (rank = place).
pub fn prompt_logprobs_json(
    tok: &Tokenizer,
    prompt: &[u32],
    items: &[Option<TokenLogprob>],
) -> serde_json::Value {
    let entry = |id: u32, logprob: f32, rank: usize| {
        serde_json::json!({
            "logprob": logprob,
            "rank": rank,
            "decoded_token": token_str(tok, id),
        })
    };
    let rows = prompt.iter().enumerate().map(|(j, _)| {
        let Some(Some(lp)) = (j > 0).then(|| items.get(j).cloned().flatten()) else {
            return serde_json::Value::Null;
        };
        let mut m = serde_json::Map::new();
        m.insert(
            lp.token_id.to_string(),
            entry(lp.token_id, lp.logprob, lp.rank),
        );
        for (i, &(id, l)) in lp.top.iter().enumerate() {
            m.entry(id.to_string())
                .or_insert_with(|| entry(id, l, i + 1));
        }
        serde_json::Value::Object(m)
    });
    serde_json::Value::Array(rows.collect())
}
