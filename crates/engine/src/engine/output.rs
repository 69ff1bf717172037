//! What a request hears from the engine: its outputs (new tokens, text deltas with stop
//! strings held back and cut, log-probs, usage) and the per-request state that turns each
//! step's tokens into them.

use crate::request::{FinishReason, Request, RequestId};
use crate::sampling::{StopStringMatcher, TokenLogprob};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// One step's news for one request: its new token, the text it completes, and whether it ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestOutput {
    pub id: RequestId,
    pub new_token_ids: Vec<u32>,
    /// Text delta: never a broken UTF-8 character, never part of a stop string.
    pub text: String,
    pub finished: Option<FinishReason>,
    pub usage: Usage,
    /// Log-probs of `new_token_ids` when the request asked for them.
    pub logprobs: Vec<TokenLogprob>,
    /// On the first output only, when asked for: one entry per prompt token (the first is None).
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    /// On the first output only: seconds from arrival until first scheduled.
    pub queue_secs: Option<f64>,
    /// Why the engine failed this request (with `finished: Some(Error)`).
    pub error: Option<String>,
}

/// Where a request's outputs go, and the state needed to produce them.
pub(super) struct Sink {
    pub tx: tokio::sync::mpsc::UnboundedSender<RequestOutput>,
    decoder: IncrementalDecoder,
    stop: StopStringMatcher,
    prompt_len: usize,
    pub generated: usize,
    pub cached_tokens: usize,
    /// Prompt log-probs gathered over the prompt's chunks (position 0 has none).
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    prompt_logprobs_sent: bool,
    arrived: std::time::Instant,
    queue_secs: Option<f64>,
}

impl Sink {
    pub fn new(req: &Request, tx: tokio::sync::mpsc::UnboundedSender<RequestOutput>) -> Self {
        Self {
            tx,
            decoder: IncrementalDecoder::new(req.params.skip_special_tokens),
            stop: StopStringMatcher::new(req.params.stop.clone())
                .including_stop(req.params.include_stop_str_in_output),
            prompt_len: req.prompt_len,
            generated: 0,
            cached_tokens: 0,
            prompt_logprobs: req.params.prompt_logprobs.map(|_| vec![None]),
            prompt_logprobs_sent: false,
            arrived: std::time::Instant::now(),
            queue_secs: None,
        }
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Notes the first time the request is scheduled.
    pub fn scheduled(&mut self) {
        if self.queue_secs.is_none() {
            self.queue_secs = Some(self.arrived.elapsed().as_secs_f64());
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens,
        }
    }

    /// The final output of a request ended early (abort, failure).
    pub fn abort_output(&self, id: RequestId) -> RequestOutput {
        RequestOutput {
            id,
            finished: Some(FinishReason::Abort),
            usage: self.usage(),
            ..Default::default()
        }
    }

    /// The last output of a request the engine failed.
    pub fn error_output(&self, id: RequestId, error: String) -> RequestOutput {
        RequestOutput {
            id,
            finished: Some(FinishReason::Error),
            usage: self.usage(),
            error: Some(error),
            ..Default::default()
        }
    }

    /// The output for a newly generated token `tok` (already counted in `generated`);
    /// `finished` is the scheduler's verdict, which a stop string can still make `Stop`.
    pub fn token_output(
        &mut self,
        tokenizer: &Tokenizer,
        id: RequestId,
        tok: u32,
        finished: Option<FinishReason>,
        logprobs: Vec<TokenLogprob>,
    ) -> RequestOutput {
        let mut finished = finished;
        let delta = self.decoder.push(tokenizer, tok);
        let (mut text, hit) = self.stop.push(&delta);
        if hit {
            finished = Some(FinishReason::Stop);
        } else if finished.is_some() {
            let tail = self.decoder.finish();
            let (t, hit_tail) = self.stop.push(&tail);
            text.push_str(&t);
            if !hit_tail {
                text.push_str(&self.stop.flush());
            }
        }
        let (prompt_logprobs, queue_secs) = if self.prompt_logprobs_sent {
            (None, None)
        } else {
            self.prompt_logprobs_sent = true;
            (self.prompt_logprobs.take(), self.queue_secs)
        };
        RequestOutput {
            id,
            new_token_ids: vec![tok],
            text,
            finished,
            usage: self.usage(),
            logprobs,
            prompt_logprobs,
            queue_secs,
            error: None,
        }
    }
}
