//! `EngineCore::step`: schedule, build the flat batch, run the model, sample, update.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::handle::{RequestOutput, Usage};
use super::stats::EngineStats;
use crate::error::Result;
use crate::model::LlamaModel;
use crate::runner::{argmax, ModelRunner};
use crate::scheduler::{FinishReason, Request, RequestId, Scheduler};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// Where a request's outputs go, and what we need to produce them.
struct Sink {
    tx: tokio::sync::mpsc::UnboundedSender<RequestOutput>,
    decoder: IncrementalDecoder,
    prompt_len: usize,
    generated: usize,
    cached_tokens: usize,
}

pub struct EngineCore<'m> {
    pub scheduler: Scheduler,
    runner: ModelRunner<'m>,
    tokenizer: Arc<Tokenizer>,
    sinks: HashMap<RequestId, Sink>,
    stats: Arc<EngineStats>,
}

impl<'m> EngineCore<'m> {
    pub fn new(
        model: &'m LlamaModel,
        tokenizer: Arc<Tokenizer>,
        scheduler: Scheduler,
        stats: Arc<EngineStats>,
    ) -> Self {
        let runner = ModelRunner::new_cpu(
            model,
            scheduler.kv.pool().num_blocks(),
            scheduler.kv.block_size(),
        );
        Self {
            scheduler,
            runner,
            tokenizer,
            sinks: HashMap::new(),
            stats,
        }
    }

    pub fn add_request(
        &mut self,
        req: Request,
        tx: tokio::sync::mpsc::UnboundedSender<RequestOutput>,
    ) -> Result<()> {
        let id = req.id;
        let prompt_len = req.prompt_len;
        self.scheduler.add_request(req)?;
        self.sinks.insert(
            id,
            Sink {
                tx,
                decoder: IncrementalDecoder::new(true),
                prompt_len,
                generated: 0,
                cached_tokens: 0,
            },
        );
        self.publish();
        Ok(())
    }

    /// Ends a request now and frees its blocks; its stream gets a final "abort" output.
    pub fn abort(&mut self, id: RequestId) {
        if self.scheduler.abort(id) {
            if let Some(sink) = self.sinks.remove(&id) {
                let _ = sink.tx.send(RequestOutput {
                    id,
                    new_token_ids: Vec::new(),
                    text: String::new(),
                    finished: Some(FinishReason::Abort),
                    usage: Usage {
                        prompt_tokens: sink.prompt_len,
                        completion_tokens: sink.generated,
                        cached_tokens: sink.cached_tokens,
                    },
                });
            }
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
        let batch = self.scheduler.build_batch(&out);
        let logits = self.runner.execute(&batch)?;
        let rows = logits.to_vec2::<f32>()?;
        let mut next_row = 0;
        let sampled: Vec<Option<u32>> = out
            .scheduled
            .iter()
            .map(|s| {
                s.samples.then(|| {
                    let t = argmax(&rows[next_row]);
                    next_row += 1;
                    t
                })
            })
            .collect();
        let events = self.scheduler.update(&out, &sampled);
        let n_tokens = out.num_tokens();
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
                    .fetch_add(sink.prompt_len as u64, Ordering::Relaxed);
                sink.cached_tokens = self
                    .scheduler
                    .request(ev.id)
                    .map(|r| r.num_cached_tokens)
                    .unwrap_or(0);
            }
            let mut text = sink.decoder.push(&self.tokenizer, tok);
            if ev.finished.is_some() {
                text.push_str(&sink.decoder.finish());
            }
            let output = RequestOutput {
                id: ev.id,
                new_token_ids: vec![tok],
                text,
                finished: ev.finished,
                usage: Usage {
                    prompt_tokens: sink.prompt_len,
                    completion_tokens: sink.generated,
                    cached_tokens: sink.cached_tokens,
                },
            };
            // A closed receiver means the client went away: abort below.
            let gone = sink.tx.send(output).is_err();
            if ev.finished.is_some() {
                self.sinks.remove(&ev.id);
            } else if gone {
                self.abort(ev.id);
            }
        }
        self.stats.num_steps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .step_tokens
            .fetch_add(n_tokens as u64, Ordering::Relaxed);
        self.publish();
        Ok(n_tokens)
    }

    fn publish(&self) {
        let s = &self.stats;
        s.num_running
            .store(self.scheduler.num_running() as u64, Ordering::Relaxed);
        s.num_waiting
            .store(self.scheduler.num_waiting() as u64, Ordering::Relaxed);
        s.set_kv_usage(self.scheduler.kv.usage());
        s.prefix_cache_queries
            .store(self.scheduler.kv.stats.queries, Ordering::Relaxed);
        s.prefix_cache_hits
            .store(self.scheduler.kv.stats.hits, Ordering::Relaxed);
        s.num_preemptions
            .store(self.scheduler.num_preemptions, Ordering::Relaxed);
    }
}

impl EngineCore<'_> {
    /// Aborts every request (after an unrecoverable step error).
    pub fn fail_all(&mut self) {
        let ids: Vec<RequestId> = self.sinks.keys().copied().collect();
        for id in ids {
            self.abort(id);
        }
    }
}
