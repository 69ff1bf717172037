//! `EngineCore::step`: schedule, build the flat batch, run the model, sample, update, and
//! turn each request's news into text deltas (with stop strings held back and cut).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::output::{RequestOutput, Sink};
use super::stats::EngineStats;
use super::step::{execute_step, StepLogits, StepMode};
use crate::config::{MaskObserver, StepObserver};
use crate::env::{EngineSwitches, FaultInject};
use crate::error::Result;
use crate::model::LlamaModel;
use crate::request::{Request, RequestId};
use crate::sampling::select::device_samplable;
use crate::sampling::{sample_token, top_logprobs, TokenLogprob};
use crate::scheduler::Scheduler;
use crate::tokenizer::Tokenizer;
use crate::worker::ModelRunner;

pub struct EngineCore<'m> {
    pub scheduler: Scheduler,
    runner: ModelRunner<'m>,
    tokenizer: Arc<Tokenizer>,
    sinks: HashMap<RequestId, Sink>,
    stats: Arc<EngineStats>,
    pub step_observer: Option<StepObserver>,
    pub mask_observer: Option<MaskObserver>,
    fault_inject: Option<FaultInject>,
    /// Sampled steps drawn away from the host's logits rows (FERROLM_DEVICE_SAMPLER; unset:
    /// on a GPU).
    device_sampler: bool,
}

impl<'m> EngineCore<'m> {
    pub fn new(
        model: &'m LlamaModel,
        tokenizer: Arc<Tokenizer>,
        scheduler: Scheduler,
        stats: Arc<EngineStats>,
        switches: EngineSwitches,
    ) -> Result<Self> {
        let mut runner = ModelRunner::new(
            model,
            scheduler.kv.pool().num_blocks(),
            scheduler.kv.block_size(),
        )?;
        if let Some(line) = runner.capture_decode_graphs(
            scheduler.config.max_num_seqs,
            scheduler.config.max_model_len,
            switches.enforce_eager,
        )? {
            tracing::info!("{line}");
        }
        let device_sampler = switches.device_sampler_on(runner.on_gpu());
        Ok(Self {
            scheduler,
            runner,
            tokenizer,
            sinks: HashMap::new(),
            stats,
            step_observer: None,
            mask_observer: None,
            fault_inject: switches.fault_inject,
            device_sampler,
        })
    }

    /// Takes a request the handle has already checked; one the scheduler still refuses
    /// ends at once with an "abort" output.
    pub fn add_request(
        &mut self,
        req: Request,
        tx: tokio::sync::mpsc::UnboundedSender<RequestOutput>,
    ) {
        let id = req.id;
        self.sinks.insert(id, Sink::new(&req, tx));
        if self.scheduler.add_request(req).is_err() {
            self.abort(id);
        }
        self.publish();
    }

    /// Ends a request now and frees its blocks; its stream gets a final "abort" output.
    pub fn abort(&mut self, id: RequestId) {
        self.scheduler.abort(id);
        self.publish();
        if let Some(sink) = self.sinks.remove(&id) {
            let _ = sink.tx.send(sink.abort_output(id));
        }
        self.publish();
    }

    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }

    /// One engine step. Returns the number of tokens computed.
    pub fn step(&mut self) -> Result<usize> {
        let out = self.scheduler.schedule();
        if out.is_empty() {
            self.publish();
            return Ok(0);
        }
        for s in &out.scheduled {
            if let Some(sink) = self.sinks.get_mut(&s.id) {
                sink.scheduled();
            }
        }
        // On a GPU, a step whose every sampling request is plain greedy takes its argmax
        // there and copies only ids back.
        let device_greedy = self.runner.on_gpu()
            && out.scheduled.iter().all(|s| {
                self.scheduler.request(s.id).is_none_or(|r| {
                    r.params
                        .is_plain_greedy(r.tokens.len().saturating_sub(r.prompt_len))
                })
            });
        let eog = &self.tokenizer.eog_ids;
        // With the device sampler on, a step whose every request can be drawn away from
        // the host (no prompt log-probs, no grammar) is sampled there: ids cross, not rows.
        let device_sampled = !device_greedy
            && self.device_sampler
            && out.scheduled.iter().all(|s| {
                self.scheduler
                    .request(s.id)
                    .is_none_or(|r| device_samplable(&r.params))
            });
        let vocab = self.runner.vocab_size();
        let spec =
            |req: &Request| req.sample_spec(if req.params.ignore_eos { &[] } else { eog }, vocab);
        let mode = if device_greedy {
            StepMode::Greedy
        } else if device_sampled {
            StepMode::Sampled(&spec)
        } else {
            StepMode::Host
        };
        let fault = self.fault_inject;
        if let Some(FaultInject::Step(seed)) = fault {
            let hit = out.scheduled.iter().any(|s| {
                self.scheduler
                    .request(s.id)
                    .is_some_and(|r| r.params.seed == Some(seed))
            });
            assert!(!hit, "injected step fault (FERROLM_FAULT_INJECT)");
        }
        let sinks = &self.sinks;
        let mask_observer = &self.mask_observer;
        // Each request's choice is computed on its own (in parallel); the books are kept after.
        let (events, choices) = execute_step(
            &mut self.scheduler,
            &mut self.runner,
            &out,
            mode,
            |req, s, range, logits| {
                let StepLogits::Host(logits) = logits else {
                    return logits.last_token(s, &range).map(|t| Choice {
                        logprobs: logits.last_logprobs(&range),
                        ..Choice::token(t)
                    });
                };
                let mut choice = Choice::default();
                // Prompt log-probs: row for position p scores the prompt token at p + 1.
                let wants_prompt = sinks
                    .get(&s.id)
                    .is_some_and(|sink| sink.prompt_logprobs.is_some());
                if let (Some(k), true) = (req.params.prompt_logprobs, wants_prompt) {
                    for (j, row) in range.clone().enumerate() {
                        let next = s.start + j + 1;
                        if next < req.prompt_len {
                            choice.prompt_logprobs.push(Some(top_logprobs(
                                &logits[row],
                                req.tokens[next],
                                k,
                            )));
                        }
                    }
                }
                if !s.samples || range.is_empty() {
                    return Some(choice);
                }
                let raw = &logits[range.end - 1];
                let sampled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    if fault == Some(FaultInject::Sample(req.params.seed.unwrap_or(u64::MAX))) {
                        panic!("injected sampling fault (FERROLM_FAULT_INJECT)");
                    }
                    let mut work = raw.clone();
                    // The grammar's mask first: no later step may bring back a token it
                    // forbids (-inf stays -inf under bias, penalties and temperature).
                    let mut grammar = match req.grammar.as_ref().map(|g| g.lock()) {
                        None => None,
                        Some(Ok(g)) => Some(g),
                        // A panic while it was held: its state is unknown, never skip it.
                        Some(Err(_)) => return Err("the output's grammar state was lost".into()),
                    };
                    if let Some(g) = grammar.as_mut() {
                        let t = std::time::Instant::now();
                        if let Err(why) = g.mask_logits(&mut work) {
                            return Err(format!("the output's grammar cannot go on: {why}"));
                        }
                        if let Some(obs) = mask_observer {
                            (obs.0)(t.elapsed().as_secs_f64());
                        }
                    }
                    let (prompt, output) = req.tokens.split_at(req.prompt_len);
                    let stop_ids: &[u32] = if req.params.ignore_eos { &[] } else { eog };
                    let tok =
                        sample_token(&mut work, &req.params, prompt, output, stop_ids, req.seed)
                            .token;
                    if let Some(g) = grammar.as_mut() {
                        g.advance(tok).map_err(|why| {
                            format!("the output's grammar refused a token: {why}")
                        })?;
                    }
                    let logprobs = req.params.logprobs.map(|k| top_logprobs(raw, tok, k));
                    Ok((tok, logprobs))
                }));
                match sampled {
                    Ok(Ok((tok, logprobs))) => {
                        choice.token = Some(tok);
                        choice.logprobs = logprobs;
                    }
                    Ok(Err(why)) => {
                        choice.failure = Some(why);
                        choice.token = Some(0);
                    }
                    Err(panic) => {
                        choice.failure = Some(panic_message(&*panic));
                        // Any id keeps the scheduler's books; the request is failed below.
                        choice.token = Some(0);
                    }
                }
                Some(choice)
            },
            |c| c.token,
        )?;
        let mut new_logprobs: HashMap<RequestId, TokenLogprob> = HashMap::new();
        let mut failed: Vec<(RequestId, String)> = Vec::new();
        for (id, c) in choices {
            if !c.prompt_logprobs.is_empty() {
                if let Some(pl) = self
                    .sinks
                    .get_mut(&id)
                    .and_then(|s| s.prompt_logprobs.as_mut())
                {
                    pl.extend(c.prompt_logprobs);
                }
            }
            if let Some(lp) = c.logprobs {
                new_logprobs.insert(id, lp);
            }
            if let Some(why) = c.failure {
                failed.push((id, why));
            }
        }
        // Counters and the step's statistics first: a client that sees its last token also
        // sees its blocks freed and this step counted.
        self.publish();
        let n_tokens = out.num_tokens();
        if let Some(obs) = &self.step_observer {
            (obs.0)(n_tokens);
        }
        self.stats.num_steps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .step_tokens
            .fetch_add(n_tokens as u64, Ordering::Relaxed);
        for (id, why) in failed {
            self.fail_request(id, format!("sampling failed: {why}"));
        }
        for ev in events {
            let Some(tok) = ev.new_token else { continue };
            self.stats.generation_tokens.fetch_add(1, Ordering::Relaxed);
            let Some(sink) = self.sinks.get_mut(&ev.id) else {
                continue;
            };
            sink.generated += 1;
            if sink.generated == 1 {
                // Prompt tokens count once, when the prefill has produced the first token.
                self.stats
                    .prompt_tokens
                    .fetch_add(sink.prompt_len() as u64, Ordering::Relaxed);
                sink.cached_tokens = self
                    .scheduler
                    .request(ev.id)
                    .map(|r| r.num_cached_tokens)
                    .unwrap_or(0);
            }
            let logprobs = new_logprobs.remove(&ev.id).into_iter().collect();
            let tokenizer = &self.tokenizer;
            let output = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                sink.token_output(tokenizer, ev.id, tok, ev.finished, logprobs)
            })) {
                Ok(o) => o,
                Err(panic) => {
                    let why = format!("detokenizing failed: {}", panic_message(&*panic));
                    self.fail_request(ev.id, why);
                    continue;
                }
            };
            let finished = output.finished;
            if finished.is_some() && ev.finished.is_none() {
                // A stop string ended it: the scheduler still has it running.
                self.scheduler.finish_request(ev.id);
                publish_counters(&self.scheduler, &self.stats);
            }
            // A closed receiver means the client went away: abort.
            let gone = sink.tx.send(output).is_err();
            if finished.is_some() {
                self.sinks.remove(&ev.id);
            } else if gone {
                self.abort(ev.id);
            }
        }
        self.publish();
        Ok(n_tokens)
    }

    /// Fails every request (after an unrecoverable step error), saying why.
    pub fn fail_all(&mut self, why: &str) {
        let ids: Vec<RequestId> = self.sinks.keys().copied().collect();
        for id in ids {
            self.fail_request(id, why.to_string());
        }
    }

    /// Ends one request with an error output (its blocks freed); the others go on.
    pub fn fail_request(&mut self, id: RequestId, why: String) {
        tracing::error!(request = id, "request failed: {why}");
        self.scheduler.abort(id);
        if let Some(sink) = self.sinks.remove(&id) {
            let _ = sink.tx.send(sink.error_output(id, why));
        }
        self.publish();
    }

    fn publish(&self) {
        publish_counters(&self.scheduler, &self.stats);
    }
}

/// A panic's message, as far as it has one.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Copies the scheduler's state into the counters the server exports.
fn publish_counters(scheduler: &Scheduler, s: &EngineStats) {
    s.num_running
        .store(scheduler.num_running() as u64, Ordering::Relaxed);
    s.num_waiting
        .store(scheduler.num_waiting() as u64, Ordering::Relaxed);
    s.set_kv_usage(scheduler.kv.usage());
    s.prefix_cache_queries
        .store(scheduler.kv.stats.queries, Ordering::Relaxed);
    s.prefix_cache_hits
        .store(scheduler.kv.stats.hits, Ordering::Relaxed);
    s.num_preemptions
        .store(scheduler.num_preemptions, Ordering::Relaxed);
}

/// One request's result of a step: its token (none for a prefill chunk that does not sample),
/// log-probs, prompt log-probs of the rows it computed, or why sampling failed.
#[derive(Default)]
struct Choice {
    token: Option<u32>,
    logprobs: Option<TokenLogprob>,
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    failure: Option<String>,
}

impl Choice {
    fn token(t: u32) -> Self {
        Self {
            token: Some(t),
            ..Self::default()
        }
    }
}
