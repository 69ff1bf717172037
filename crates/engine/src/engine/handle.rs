//! `EngineHandle`: starts the engine thread and talks to it through channels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::core::EngineCore;
use super::kv_sizing::kv_blocks;
use super::output::RequestOutput;
use super::stats::EngineStats;
use crate::config::{EngineConfig, RequestLimits};
use crate::env::EngineSwitches;
use crate::error::{EngineError, InvalidParam, Result};
use crate::kv_cache::KvCacheManager;
use crate::model::LlamaModel;
use crate::request::{Request, RequestId, ValidRequest};
use crate::sampling::SamplingParams;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::structured::GrammarCompiler;
use crate::tokenizer::Tokenizer;
use crate::worker::compute_pool;

enum Command {
    Add {
        req: Request,
        tx: tokio::sync::mpsc::UnboundedSender<RequestOutput>,
    },
    Abort(RequestId),
    Shutdown,
}

/// The server's side of the engine. Cheap to share behind an `Arc`.
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    next_id: AtomicU64,
    pub stats: Arc<EngineStats>,
    pub tokenizer: Arc<Tokenizer>,
    pub max_model_len: usize,
    pub num_blocks: usize,
    limits: RequestLimits,
    /// Compiles requests' grammars against the model's tokenizer.
    grammars: GrammarCompiler,
    join: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl EngineHandle {
    /// Sizes the KV cache (see `kv_sizing`), resolves the device's defaults (token budget,
    /// prefill cap), captures CUDA graphs unless eager, and starts the engine thread, which
    /// owns the model from then on.
    pub fn start(model: LlamaModel, tokenizer: Arc<Tokenizer>, cfg: EngineConfig) -> Result<Self> {
        let c = &model.config;
        let max_model_len = cfg.max_model_len.unwrap_or(c.max_position_embeddings);
        if max_model_len == 0 || max_model_len > c.max_position_embeddings {
            return Err(EngineError::Config(format!(
                "max_model_len {max_model_len} must be between 1 and the model's {}",
                c.max_position_embeddings
            )));
        }
        let grammars = GrammarCompiler::new(tokenizer.clone(), c.vocab_size, cfg.grammar_limits)
            .map_err(|e| EngineError::Config(format!("structured outputs: {e}")))?;
        let (num_blocks, how) = kv_blocks(&model, &cfg)?;
        if let Some(how) = how {
            tracing::info!("kv cache: {how}");
        }
        let on_cpu = model.device().is_cpu();
        // The CPU backend's prompt and generated rows differ in their last bits: key by both.
        let kv = KvCacheManager::new(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
            .key_prompt_positions(on_cpu);
        let sched_cfg = SchedulerConfig {
            max_num_seqs: cfg.max_num_seqs,
            max_num_batched_tokens: cfg.token_budget(on_cpu),
            max_model_len,
            max_batch_prefill_tokens: cfg.prefill_cap(on_cpu),
        };
        let scheduler = Scheduler::new(sched_cfg, kv, tokenizer.eog_ids.clone())?
            .with_partial_prefills(cfg.partial_prefills)?;
        let stats = Arc::new(EngineStats::default());
        let (tx, rx) = mpsc::channel::<Command>();
        let thread_stats = stats.clone();
        let thread_tok = tokenizer.clone();
        let observer = cfg.step_observer.clone();
        let mask_observer = cfg.mask_observer.clone();
        let switches = EngineSwitches {
            enforce_eager: cfg.enforce_eager(),
            ..cfg.switches
        };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let join = std::thread::Builder::new()
            .name("ferrolm-engine".into())
            .spawn(move || {
                // The loop runs on a worker of the compute pool, so the model's parallel work
                // is split between it and the other workers: one busy thread per core.
                compute_pool().install(|| {
                    match EngineCore::new(&model, thread_tok, scheduler, thread_stats, switches) {
                        Ok(mut core) => {
                            let _ = ready_tx.send(Ok(()));
                            core.step_observer = observer;
                            core.mask_observer = mask_observer;
                            engine_loop(&mut core, rx);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
            })
            .map_err(|source| EngineError::Thread { source })?;
        // The KV cache is allocated on the engine thread: wait until it is there (or not).
        ready_rx.recv().map_err(|_| EngineError::EngineStopped)??;
        Ok(Self {
            tx,
            next_id: AtomicU64::new(0),
            stats,
            tokenizer,
            max_model_len,
            num_blocks,
            limits: cfg.request_limits,
            grammars,
            join: std::sync::Mutex::new(Some(join)),
        })
    }

    /// The one check of a request (see [`ValidRequest`]); the error names the field.
    pub fn validate(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> std::result::Result<ValidRequest, InvalidParam> {
        let vocab = self.tokenizer.vocab_size();
        params.check(vocab)?;
        let limits = &self.limits;
        let stop_bytes: usize = params.stop.iter().map(String::len).sum();
        if params.stop.len() > limits.max_stop_strings || stop_bytes > limits.max_stop_bytes {
            return Err(InvalidParam::new(
                "stop",
                format!(
                    "{} stop strings of {stop_bytes} bytes; the limits are {} strings and {} bytes",
                    params.stop.len(),
                    limits.max_stop_strings,
                    limits.max_stop_bytes
                ),
            ));
        }
        if prompt.is_empty() {
            return Err(InvalidParam::new("prompt", "the prompt is empty"));
        }
        if prompt.len() >= self.max_model_len {
            let e = EngineError::PromptTooLong {
                prompt_len: prompt.len(),
                max_tokens: params.max_tokens,
                max_model_len: self.max_model_len,
            };
            return Err(InvalidParam::new("prompt", e.to_string()));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(InvalidParam::new(
                "prompt",
                format!("token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        // Compiled last: the cheap checks refuse first.
        let grammar = match &params.structured {
            Some(s) => Some(
                self.grammars
                    .compile(&s.spec, &s.layout)
                    .map_err(|e| InvalidParam::new(s.param, format!("{}: {e}", s.spec.kind())))?,
            ),
            None => None,
        };
        Ok(ValidRequest {
            prompt,
            params,
            grammar,
        })
    }

    /// Checks and queues a request ([`Self::validate`] then [`Self::submit`]).
    pub fn add_request(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<(
        RequestId,
        tokio::sync::mpsc::UnboundedReceiver<RequestOutput>,
    )> {
        self.submit(self.validate(prompt, params)?)
    }

    /// Queues a checked request; its outputs arrive on the returned receiver. Never waits for
    /// the engine thread (which only reads commands between steps). Dropping the receiver
    /// aborts the request at the engine's next token; `abort` frees it at once.
    pub fn submit(
        &self,
        req: ValidRequest,
    ) -> Result<(
        RequestId,
        tokio::sync::mpsc::UnboundedReceiver<RequestOutput>,
    )> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.tx
            .send(Command::Add {
                req: Request::from_valid(id, req),
                tx,
            })
            .map_err(|_| EngineError::EngineStopped)?;
        Ok((id, rx))
    }

    /// Whether the engine thread still runs (false once it has died or shut down).
    pub fn is_alive(&self) -> bool {
        self.join
            .lock()
            .ok()
            .is_some_and(|j| j.as_ref().is_some_and(|h| !h.is_finished()))
    }

    pub fn abort(&self, id: RequestId) {
        let _ = self.tx.send(Command::Abort(id));
    }

    /// Stops the engine thread after its current step and waits for it.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Ok(mut j) = self.join.lock() {
            if let Some(j) = j.take() {
                let _ = j.join();
            }
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn engine_loop(core: &mut EngineCore<'_>, rx: mpsc::Receiver<Command>) {
    loop {
        // Idle: block until something arrives. Busy: take what is queued, then step.
        let first = if core.has_work() {
            match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        };
        let mut next = first;
        while let Some(cmd) = next {
            match cmd {
                Command::Add { req, tx } => core.add_request(req, tx),
                Command::Abort(id) => core.abort(id),
                Command::Shutdown => return,
            }
            next = rx.try_recv().ok();
        }
        if core.has_work() {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.step())) {
                Ok(Ok(_)) => {}
                // A failed step fails every request in it rather than the whole server.
                Ok(Err(e)) => {
                    tracing::error!("engine step failed: {e}");
                    core.fail_all(&format!("the engine step failed: {e}"));
                }
                // A panic leaves the engine's state unknown: fail everything and stop, so
                // /health fails and the pod is restarted.
                Err(panic) => {
                    let why = super::core::panic_message(&*panic);
                    tracing::error!("engine step panicked: {why}; the engine stops");
                    core.fail_all(&format!("the engine failed: {why}"));
                    return;
                }
            }
        }
    }
}
