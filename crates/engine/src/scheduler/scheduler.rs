//! `Scheduler::schedule` picks each step's work; `Scheduler::update` applies its results.

use std::collections::VecDeque;

use crate::batch::{FlatBatch, LogitsWanted};
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCacheManager;
use crate::request::{FinishReason, Request, RequestId, RequestStatus};

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    /// Tokens per step, decode and prompt tokens together (vLLM's meaning).
    pub max_num_batched_tokens: usize,
    pub max_model_len: usize,
    /// Prompt tokens per step, across requests (TGI's `--max-batch-prefill-tokens`); decode
    /// tokens do not count. `None`: only `max_num_batched_tokens` bounds them.
    pub max_batch_prefill_tokens: Option<usize>,
}

/// One request's share of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRequest {
    pub id: RequestId,
    /// Tokens already in the cache before this step.
    pub start: usize,
    pub num_new_tokens: usize,
    /// Whether this step reaches the end of the request's known tokens (so a token is sampled).
    pub samples: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SchedulerOutput {
    pub scheduled: Vec<ScheduledRequest>,
    pub preempted: Vec<RequestId>,
}

impl SchedulerOutput {
    pub fn num_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.num_new_tokens).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }
}

/// What happened to a request in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepEvent {
    pub id: RequestId,
    pub new_token: Option<u32>,
    pub finished: Option<FinishReason>,
}

pub struct Scheduler {
    pub config: SchedulerConfig,
    pub kv: KvCacheManager,
    waiting: VecDeque<Request>,
    /// In admission order: the last one is preempted first.
    running: Vec<Request>,
    eog_ids: Vec<u32>,
    pub num_preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, kv: KvCacheManager, eog_ids: Vec<u32>) -> Result<Self> {
        let need = config.max_model_len.div_ceil(kv.block_size());
        if kv.pool().num_blocks() < need {
            return Err(EngineError::Config(format!(
                "the KV cache has {} blocks of {} tokens but one {}-token sequence needs {need}: \
                 give it more memory or lower --max-model-len",
                kv.pool().num_blocks(),
                kv.block_size(),
                config.max_model_len
            )));
        }
        if config.max_num_seqs == 0
            || config.max_num_batched_tokens == 0
            || config.max_batch_prefill_tokens == Some(0)
        {
            return Err(EngineError::Config(
                "max_num_seqs, max_num_batched_tokens and max_batch_prefill_tokens must be positive"
                    .into(),
            ));
        }
        Ok(Self {
            config,
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            eog_ids,
            num_preemptions: 0,
        })
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .find(|r| r.id == id)
    }

    /// Queues a request; refuses one that could never run.
    pub fn add_request(&mut self, req: Request) -> Result<()> {
        if req.tokens.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if req.prompt_len >= self.config.max_model_len {
            return Err(EngineError::PromptTooLong {
                prompt_len: req.prompt_len,
                max_tokens: req.params.max_tokens,
                max_model_len: self.config.max_model_len,
            });
        }
        self.waiting.push_back(req);
        Ok(())
    }

    /// Removes a request wherever it is and frees its blocks at once.
    pub fn abort(&mut self, id: RequestId) -> bool {
        let found = if let Some(i) = self.running.iter().position(|r| r.id == id) {
            self.running.remove(i);
            true
        } else if let Some(i) = self.waiting.iter().position(|r| r.id == id) {
            self.waiting.remove(i);
            true
        } else {
            false
        };
        self.kv.free(id);
        found
    }

    fn preempt_last(&mut self) -> Option<RequestId> {
        let mut victim = self.running.pop()?;
        self.kv.free(victim.id);
        victim.num_computed = 0;
        victim.status = RequestStatus::Preempted;
        victim.num_preemptions += 1;
        victim.pending_cached.clear();
        self.num_preemptions += 1;
        let id = victim.id;
        self.waiting.push_front(victim);
        Some(id)
    }

    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;
        // A chunk of more than one token is prompt (or recompute) work; one token is a decode.
        let mut prefill_budget = self.config.max_batch_prefill_tokens.unwrap_or(usize::MAX);
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let (id, start, remaining, prompt_len) = {
                let r = &self.running[i];
                (
                    r.id,
                    r.num_computed,
                    r.tokens.len() - r.num_computed,
                    r.prompt_len,
                )
            };
            let n = if remaining > 1 {
                remaining.min(budget).min(prefill_budget)
            } else {
                remaining.min(budget)
            };
            if n == 0 {
                i += 1;
                continue;
            }
            let mut scheduled = false;
            loop {
                let tokens = &self.running[i].tokens;
                if self
                    .kv
                    .allocate_slots(id, start + n, &[], tokens, prompt_len)
                    .is_some()
                {
                    scheduled = true;
                    break;
                }
                // Out of blocks: recompute-preempt the most recently admitted request.
                match self.preempt_last() {
                    Some(v) => {
                        out.preempted.push(v);
                        if v == id {
                            break;
                        }
                    }
                    None => break,
                }
            }
            if !scheduled {
                break;
            }
            out.scheduled.push(ScheduledRequest {
                id,
                start,
                num_new_tokens: n,
                samples: start + n == self.running[i].tokens.len(),
            });
            budget -= n;
            if remaining > 1 {
                prefill_budget -= n;
            }
            i += 1;
        }
        // No admissions in a step that had to preempt: the pool is under pressure.
        if out.preempted.is_empty() {
            while budget > 0 && prefill_budget > 0 && self.running.len() < self.config.max_num_seqs
            {
                let Some(req) = self.waiting.front_mut() else {
                    break;
                };
                // Prompt log-probs need every prompt position computed: no cache reads.
                let (cached, n_cached) = if req.params.prompt_logprobs.is_some() {
                    (Vec::new(), req.num_computed)
                } else if req.num_computed == 0 {
                    self.kv
                        .find_cached_prefix(req.id, &req.tokens, req.prompt_len)
                } else {
                    (Vec::new(), req.num_computed)
                };
                let n = (req.tokens.len() - n_cached)
                    .min(budget)
                    .min(prefill_budget);
                if self
                    .kv
                    .allocate_slots(req.id, n_cached + n, &cached, &req.tokens, req.prompt_len)
                    .is_none()
                {
                    break;
                }
                let mut req = self.waiting.pop_front().expect("front exists");
                req.num_computed = n_cached;
                if req.num_preemptions == 0 {
                    req.num_cached_tokens = n_cached;
                }
                req.status = RequestStatus::Running;
                out.scheduled.push(ScheduledRequest {
                    id: req.id,
                    start: n_cached,
                    num_new_tokens: n,
                    samples: n_cached + n == req.tokens.len(),
                });
                budget -= n;
                prefill_budget -= n;
                self.running.push(req);
            }
        }
        out
    }

    /// The flat batch for a step: each scheduled request's new tokens with its block table.
    /// Logits rows: the last row for requests that sample this step, every row of a prompt
    /// chunk whose request asked for prompt log-probs. Returns, per scheduled request, the
    /// range of its rows in the logits.
    pub fn build_batch(&self, out: &SchedulerOutput) -> (FlatBatch, Vec<std::ops::Range<usize>>) {
        let mut batch = FlatBatch::default();
        let mut rows = Vec::with_capacity(out.scheduled.len());
        let bs = self.kv.block_size();
        for s in &out.scheduled {
            let Some(r) = self.running.iter().find(|r| r.id == s.id) else {
                rows.push(0..0);
                continue;
            };
            let want = if r.params.prompt_logprobs.is_some() && s.start < r.prompt_len {
                LogitsWanted::All
            } else if s.samples {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            };
            let first = batch.logits_indices.len();
            batch.push_seq(
                &r.tokens[s.start..s.start + s.num_new_tokens],
                s.start,
                self.kv.block_table(s.id),
                bs,
                want,
            );
            batch.set_prompt_len(r.prompt_len);
            rows.push(first..batch.logits_indices.len());
        }
        (batch, rows)
    }

    /// Ends a running request early (a stop string matched) and frees its blocks.
    pub fn finish_request(&mut self, id: RequestId) {
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            self.running.remove(i);
        }
        self.kv.free(id);
    }

    /// Applies a step: `sampled[i]` is the token for `out.scheduled[i]` when it samples.
    /// Finished requests leave the running set and free their blocks.
    pub fn update(&mut self, out: &SchedulerOutput, sampled: &[Option<u32>]) -> Vec<StepEvent> {
        let mut events = Vec::with_capacity(out.scheduled.len());
        for (s, tok) in out.scheduled.iter().zip(sampled) {
            let Some(idx) = self.running.iter().position(|r| r.id == s.id) else {
                continue;
            };
            let r = &mut self.running[idx];
            r.num_computed = s.start + s.num_new_tokens;
            let Some(&t) = tok.as_ref().filter(|_| s.samples) else {
                continue;
            };
            r.tokens.push(t);
            let n_out = r.num_output();
            let p = &r.params;
            let finished = if n_out >= p.min_tokens
                && ((!p.ignore_eos && self.eog_ids.contains(&t)) || p.stop_token_ids.contains(&t))
            {
                Some(FinishReason::Stop)
            } else if n_out >= p.max_tokens || r.tokens.len() >= self.config.max_model_len {
                Some(FinishReason::Length)
            } else {
                None
            };
            events.push(StepEvent {
                id: s.id,
                new_token: Some(t),
                finished,
            });
            if finished.is_some() {
                self.running.remove(idx);
                self.kv.free(s.id);
            }
        }
        events
    }
}
