//! `Scheduler::schedule` picks each step's work; `Scheduler::update` applies its results.

use std::collections::VecDeque;

use super::partial::{PartialCount, PrefillPlan};
use crate::batch::{FlatBatch, LogitsWanted};
use crate::config::PartialPrefills;
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
    /// How prompts share a step's prompt tokens ([`Scheduler::with_partial_prefills`]).
    partial: PartialPrefills,
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
            partial: PartialPrefills::default(),
            num_preemptions: 0,
        })
    }

    /// Sets how prompts share a step's prompt tokens (the default shares; see
    /// [`PartialPrefills`]).
    pub fn with_partial_prefills(mut self, partial: PartialPrefills) -> Result<Self> {
        partial.check().map_err(EngineError::Config)?;
        self.partial = partial;
        Ok(self)
    }

    /// Prompts with more tokens than this left to compute are long ([`PartialPrefills`]).
    pub fn long_prefill_threshold(&self) -> usize {
        let step = self
            .config
            .max_batch_prefill_tokens
            .unwrap_or(self.config.max_num_batched_tokens)
            .min(self.config.max_num_batched_tokens);
        self.partial
            .long_prefill_token_threshold
            .unwrap_or((step / 2).max(1))
    }

    /// The running requests, oldest first.
    pub fn running(&self) -> &[Request] {
        &self.running
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

    /// The step's prompt-token pool (the prefill cap, less room for the running decodes, so
    /// decodes are never squeezed out by prompt chunks) and how prompts share it.
    fn plan_prefills(&self) -> (usize, PrefillPlan) {
        let left = |r: &Request| r.tokens.len() - r.num_computed;
        let decodes = self.running.iter().filter(|r| left(r) <= 1).count();
        let pool = self
            .config
            .max_batch_prefill_tokens
            .unwrap_or(usize::MAX)
            .min(self.config.max_num_batched_tokens.saturating_sub(decodes));
        let threshold = self.long_prefill_threshold();
        // A prompt that began long holds the long slot until its prefill ends, even once what
        // is left of it is short: otherwise the next long prompt takes the slot (and the step's
        // tokens) in the step the first one finishes, and a short prompt arriving then waits.
        let began_long = |r: &Request| r.prompt_len.saturating_sub(r.num_cached_tokens) > threshold;
        let plan = self.partial.plan(
            pool,
            threshold,
            self.running
                .iter()
                .filter(|r| left(r) > 1)
                .map(|r| (left(r), began_long(r))),
            self.waiting.iter().map(left),
            self.config.max_num_seqs.saturating_sub(self.running.len()),
        );
        (pool, plan)
    }

    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;
        // A chunk of more than one token is prompt (or recompute) work; one token is a decode.
        let (mut prefill_budget, plan) = self.plan_prefills();
        let mut partial = PartialCount::default();
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
            let prefill = remaining > 1;
            let n = if prefill {
                remaining
                    .min(budget)
                    .min(prefill_budget)
                    .min(plan.cap(remaining))
            } else {
                remaining.min(budget)
            };
            if n == 0 {
                if prefill {
                    partial.add(&plan, remaining);
                }
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
            if prefill {
                prefill_budget -= n;
                if n < remaining {
                    partial.add(&plan, remaining);
                }
            }
            i += 1;
        }
        // Prompts the loop did not reach stay part-way.
        for r in &self.running[i.min(self.running.len())..] {
            let left = r.tokens.len() - r.num_computed;
            if left > 1 {
                partial.add(&plan, left);
            }
        }
        // No admissions in a step that had to preempt: the pool is under pressure.
        if out.preempted.is_empty() {
            self.admit_waiting(&mut out, (budget, prefill_budget), &plan, partial);
        }
        out
    }

    /// Starts waiting requests, in queue order except that a long prompt waiting for a long
    /// slot ([`PartialPrefills`]) lets the ones behind it pass.
    fn admit_waiting(
        &mut self,
        out: &mut SchedulerOutput,
        (mut budget, mut prefill_budget): (usize, usize),
        plan: &PrefillPlan,
        mut partial: PartialCount,
    ) {
        let (mut long_starts, mut reserve) = (plan.long_starts, plan.short_reserve);
        let mut idx = 0;
        while budget > 0
            && prefill_budget > 0
            && self.running.len() < self.config.max_num_seqs
            && idx < self.waiting.len()
        {
            let req = &self.waiting[idx];
            // Judged without the prefix cache, so that passing needs no lookup.
            let uncached = req.tokens.len() - req.num_computed;
            // A long prompt the plan did not start leaves the planned short ones their tokens.
            let long_room = |prefill_budget: usize, long: bool| {
                if long && long_starts == 0 {
                    prefill_budget.saturating_sub(reserve)
                } else {
                    prefill_budget
                }
            };
            let room = budget
                .min(long_room(prefill_budget, plan.is_long(uncached)))
                .min(plan.cap(uncached));
            if plan.is_long(uncached)
                && uncached > room
                && (partial.long >= plan.max_long || room == 0)
            {
                idx += 1;
                continue;
            }
            // Prompt log-probs need every prompt position computed: no cache reads.
            let (cached, n_cached) = if req.params.prompt_logprobs.is_some() {
                (Vec::new(), req.num_computed)
            } else if req.num_computed == 0 {
                self.kv
                    .find_cached_prefix(req.id, &req.tokens, req.prompt_len)
            } else {
                (Vec::new(), req.num_computed)
            };
            let left = req.tokens.len() - n_cached;
            let long = plan.is_long(left);
            let n = left
                .min(budget)
                .min(long_room(prefill_budget, long))
                .min(plan.cap(left));
            if n == 0 {
                idx += 1;
                continue;
            }
            // A prompt that would stay part-way needs a free partial-prefill slot.
            if n < left && partial.all >= plan.max_partial {
                break;
            }
            if self
                .kv
                .allocate_slots(req.id, n_cached + n, &cached, &req.tokens, req.prompt_len)
                .is_none()
            {
                break;
            }
            let mut req = self.waiting.remove(idx).expect("index in range");
            if n < left {
                partial.add(plan, left);
            }
            // As the plan counted it.
            if plan.is_long(uncached) {
                long_starts = long_starts.saturating_sub(1);
            } else {
                reserve = reserve.saturating_sub(uncached);
            }
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
