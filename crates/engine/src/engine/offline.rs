//! Offline greedy generation over token ids: `ferrolm bench throughput` and `bench latency`
//! (EOS ignored, each request runs to `output_len`) and the goldens' reference generation
//! ([`greedy_generate`]). The same scheduler (continuous batching, chunked prefill,
//! preemption), step and model runner as the server, without the text side (like vLLM's
//! `--skip-tokenizer-init`).

use std::time::Instant;

use crate::error::{EngineError, Result};
use crate::kv_cache::KvCacheManager;
use crate::lcg::lcg_next;
use crate::model::LlamaModel;
use crate::request::{FinishReason, Request};
use crate::sampling::{sample_token, SamplingParams};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::worker::{compute_pool, ModelRunner};

use super::step::{execute_step, StepLogits, StepMode};

/// What an offline run did, with its wall time and each step's.
#[derive(Debug, Clone, Default)]
pub struct OfflineReport {
    pub num_requests: usize,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub secs: f64,
    /// Seconds of each step, in order (the host waits for each step's ids).
    pub step_secs: Vec<f64>,
    /// Tokens computed in each step.
    pub step_tokens: Vec<usize>,
    /// Requests in each step (a step with as many tokens as requests is a decode step).
    pub step_seqs: Vec<usize>,
    pub preemptions: usize,
}

impl OfflineReport {
    pub fn output_tok_per_s(&self) -> f64 {
        self.output_tokens as f64 / self.secs
    }
    pub fn total_tok_per_s(&self) -> f64 {
        (self.prompt_tokens + self.output_tokens) as f64 / self.secs
    }
    /// Mean seconds of the steps that computed one token per running request (decode).
    pub fn mean_decode_step_secs(&self, batch: usize) -> Option<f64> {
        let d: Vec<f64> = self
            .step_secs
            .iter()
            .zip(&self.step_tokens)
            .filter(|(_, &n)| n <= batch)
            .map(|(s, _)| *s)
            .collect();
        (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
    }

    /// Where the time went: (steps, seconds, mean requests per step) of the decode steps
    /// (one token per request) and of the others (with prompt tokens).
    pub fn phase_split(&self) -> [(usize, f64, f64); 2] {
        let mut out = [(0usize, 0f64, 0f64); 2];
        for ((&secs, &tokens), &seqs) in self
            .step_secs
            .iter()
            .zip(&self.step_tokens)
            .zip(&self.step_seqs)
        {
            let o = &mut out[usize::from(tokens != seqs)];
            o.0 += 1;
            o.1 += secs;
            o.2 += seqs as f64;
        }
        for o in &mut out {
            o.2 /= o.0.max(1) as f64;
        }
        out
    }
}

/// Sampling for an offline run (`bench throughput --temperature ...`): every request drawn
/// with these cuts and its own seed (its index), on the host or by the device sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OfflineSampling {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    /// Draw on the GPU (the device sampler; on the CPU its algorithm), else on the host.
    pub device_sampler: bool,
}

/// Runs every prompt to `output_len` new tokens (CUDA graphs unless `enforce_eager`),
/// greedy or with `sampling`; returns the report and each request's generated ids (in
/// prompt order).
#[allow(clippy::too_many_arguments)]
pub fn generate_offline(
    model: &LlamaModel,
    config: SchedulerConfig,
    num_blocks: usize,
    block_size: usize,
    prompts: &[Vec<u32>],
    output_len: usize,
    enforce_eager: bool,
    sampling: Option<OfflineSampling>,
) -> Result<(OfflineReport, Vec<Vec<u32>>)> {
    if output_len == 0 {
        return Err(EngineError::InvalidRequest(
            "output_len must be positive".into(),
        ));
    }
    let mut params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(output_len)
    };
    if let Some(s) = sampling {
        params = SamplingParams {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            min_p: s.min_p,
            ..params
        };
        params.check(model.config.vocab_size)?;
    }
    let cache = CacheShape {
        num_blocks,
        block_size,
    };
    let mode = Mode::Bench {
        enforce_eager,
        device_sampler: sampling.is_some_and(|s| s.device_sampler),
    };
    let run = run_greedy(model, (config, cache), prompts, &params, mode)?;
    let report = OfflineReport {
        num_requests: prompts.len(),
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        output_tokens: run.outputs.iter().map(Vec::len).sum(),
        secs: run.secs,
        step_secs: run.step_secs,
        step_tokens: run.step_tokens,
        step_seqs: run.step_seqs,
        preemptions: run.preemptions,
    };
    Ok((report, run.outputs))
}

/// What [`greedy_generate`] produced, with its timings.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids per prompt (a stop token is not included).
    pub tokens: Vec<Vec<u32>>,
    /// Seconds of the first step (all prompts, one token each).
    pub prefill_secs: f64,
    /// Seconds of every later step.
    pub decode_secs: f64,
}

/// Greedy generation for several prompts at once, all prompts in the first step and one
/// token each per step after, each sequence in blocks of its own (no prefix caching, no
/// preemption): the goldens' reference path. Stops a sequence at `max_tokens` or at one of
/// `stop_ids` (not included). Eager, with the argmax of f32 logits on the host (lowest id
/// wins a tie), on every device.
pub fn greedy_generate(
    model: &LlamaModel,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    stop_ids: &[u32],
) -> Result<Generation> {
    let block_size = 16;
    let max_len = model.config.max_position_embeddings;
    for p in prompts {
        if p.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if p.len() + max_tokens > max_len {
            return Err(EngineError::PromptTooLong {
                prompt_len: p.len(),
                max_tokens,
                max_model_len: max_len,
            });
        }
    }
    if max_tokens == 0 || prompts.is_empty() {
        return Ok(Generation {
            tokens: vec![Vec::new(); prompts.len()],
            prefill_secs: 0.0,
            decode_secs: 0.0,
        });
    }
    let longest = prompts
        .iter()
        .map(|p| p.len() + max_tokens)
        .max()
        .unwrap_or(1);
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let config = SchedulerConfig {
        max_num_seqs: prompts.len(),
        max_num_batched_tokens: prompt_tokens.max(prompts.len()),
        max_model_len: longest,
        max_batch_prefill_tokens: None,
    };
    let cache = CacheShape {
        num_blocks: prompts
            .iter()
            .map(|p| (p.len() + max_tokens).div_ceil(block_size))
            .sum(),
        block_size,
    };
    let params = SamplingParams::greedy(max_tokens);
    let mode = Mode::Reference { stop_ids };
    let run = run_greedy(model, (config, cache), prompts, &params, mode)?;
    let prefill_secs = run.step_secs.first().copied().unwrap_or(0.0);
    Ok(Generation {
        tokens: run.outputs,
        prefill_secs,
        decode_secs: run.secs - prefill_secs,
    })
}

/// How a greedy run goes.
#[derive(Debug, Clone, Copy)]
enum Mode<'a> {
    /// As the benches measure: prefix caching on, the argmax where the logits are (the GPU's
    /// on a GPU), CUDA graphs unless `enforce_eager`, no stop tokens; sampled requests drawn
    /// on the host, or by the device sampler when `device_sampler`.
    Bench {
        enforce_eager: bool,
        device_sampler: bool,
    },
    /// As the goldens' reference: no prefix caching, eager, the argmax on the host, each
    /// sequence stopped at one of `stop_ids`.
    Reference { stop_ids: &'a [u32] },
}

/// The paged KV cache a greedy run gets.
#[derive(Debug, Clone, Copy)]
struct CacheShape {
    num_blocks: usize,
    block_size: usize,
}

/// What [`run_greedy`] did.
struct GreedyRun {
    /// Each prompt's generated ids, a stop token left out.
    outputs: Vec<Vec<u32>>,
    secs: f64,
    step_secs: Vec<f64>,
    step_tokens: Vec<usize>,
    step_seqs: Vec<usize>,
    preemptions: usize,
}

/// The greedy loop both offline paths drive, from inside the compute pool as the engine
/// thread is: the scheduler's steps, [`execute_step`] with greedy ids, until every request
/// has finished.
fn run_greedy(
    model: &LlamaModel,
    (config, cache): (SchedulerConfig, CacheShape),
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    mode: Mode<'_>,
) -> Result<GreedyRun> {
    let (enforce_eager, reference, stop_ids, device_sampler) = match mode {
        Mode::Bench {
            enforce_eager,
            device_sampler,
        } => (enforce_eager, false, &[][..], device_sampler),
        Mode::Reference { stop_ids } => (true, true, stop_ids, false),
    };
    let sampled = !params.is_greedy();
    let vocab = model.config.vocab_size;
    compute_pool().install(|| {
        let mut runner = ModelRunner::new(model, cache.num_blocks, cache.block_size)?;
        let eager = enforce_eager;
        if let Some(line) =
            runner.capture_decode_graphs(config.max_num_seqs, config.max_model_len, eager)?
        {
            tracing::info!("{line}");
        }
        let kv = KvCacheManager::new(cache.num_blocks, cache.block_size, !reference)
            .key_prompt_positions(model.device().is_cpu());
        let mut sched = Scheduler::new(config, kv, stop_ids.to_vec())?;
        // The cache's zeroing is queued on the device: let it finish before the clock starts.
        model.device().synchronize()?;
        let started = Instant::now();
        for (i, p) in prompts.iter().enumerate() {
            // Each request seeded by its index: a sampled run draws the same tokens each time.
            let mut r = Request::new(i as u64, p.clone(), params.clone());
            r.seed = i as u64;
            sched.add_request(r)?;
        }
        let spec = |req: &Request| req.sample_spec(&[], vocab);
        let mut run = GreedyRun {
            outputs: vec![Vec::with_capacity(params.max_tokens); prompts.len()],
            secs: 0.0,
            step_secs: Vec::new(),
            step_tokens: Vec::new(),
            step_seqs: Vec::new(),
            preemptions: 0,
        };
        while sched.has_work() {
            let t = Instant::now();
            let out = sched.schedule();
            if out.is_empty() {
                return Err(EngineError::Cache(
                    "the scheduler can place no request (KV cache too small for one?)".into(),
                ));
            }
            let (events, _) = execute_step(
                &mut sched,
                &mut runner,
                &out,
                match (reference, sampled, device_sampler) {
                    (true, _, _) | (false, true, false) => StepMode::Host,
                    (false, false, _) => StepMode::Greedy,
                    (false, true, true) => StepMode::Sampled(&spec),
                },
                |req, s, range, l| match l {
                    StepLogits::Host(rows) if sampled && s.samples && !range.is_empty() => {
                        let (prompt, output) = req.tokens.split_at(req.prompt_len);
                        let mut row = rows[range.end - 1].clone();
                        Some(
                            sample_token(&mut row, &req.params, prompt, output, &[], req.seed)
                                .token,
                        )
                    }
                    _ => l.last_token(s, &range),
                },
                |t| Some(*t),
            )?;
            for ev in events {
                match (ev.new_token, ev.finished) {
                    (Some(_), Some(FinishReason::Stop)) => {}
                    (Some(tok), _) => run.outputs[ev.id as usize].push(tok),
                    (None, _) => {}
                }
            }
            run.step_tokens.push(out.num_tokens());
            run.step_seqs.push(out.scheduled.len());
            run.step_secs.push(t.elapsed().as_secs_f64());
        }
        run.secs = started.elapsed().as_secs_f64();
        run.preemptions = sched.num_preemptions as usize;
        Ok(run)
    })
}

/// `n` prompts of `len` token ids drawn uniformly from `[lo, hi)` with a fixed generator.
pub fn random_prompts(n: usize, len: usize, lo: u32, hi: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| lo + ((lcg_next(&mut s) >> 33) % (hi - lo).max(1) as u64) as u32)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;
    use candle_core::{DType, Device};

    fn tiny() -> LlamaModel {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/configs/tiny-llama.json");
        let cfg = LlamaConfig::from_hf_json(&p).unwrap();
        LlamaModel::dummy(cfg, DType::F32, &Device::Cpu, 7).unwrap()
    }

    #[test]
    fn every_request_gets_its_tokens_and_batching_does_not_change_them() {
        let model = tiny();
        let prompts = random_prompts(6, 23, 5, 4000, 1);
        let cfg = |seqs, tokens| SchedulerConfig {
            max_num_seqs: seqs,
            max_num_batched_tokens: tokens,
            max_model_len: 512,
            max_batch_prefill_tokens: None,
        };
        // Together, with chunked prefill (budget 40 < 6 x 23 prompt tokens).
        let (rep, together) =
            generate_offline(&model, cfg(6, 40), 64, 16, &prompts, 9, false, None).unwrap();
        assert_eq!(rep.output_tokens, 6 * 9);
        assert_eq!(rep.prompt_tokens, 6 * 23);
        assert!(together.iter().all(|o| o.len() == 9));
        assert!(rep.total_tok_per_s() > 0.0);
        let [decode, prefill] = rep.phase_split();
        assert_eq!(decode.0 + prefill.0, rep.step_secs.len());
        assert!(decode.0 >= 8 && prefill.0 >= 4, "{decode:?} {prefill:?}");
        assert!(decode.2 >= 1.0 && decode.2 <= 6.0);
        // One at a time: the same greedy tokens.
        for (p, want) in prompts.iter().zip(&together) {
            let (_, alone) = generate_offline(
                &model,
                cfg(1, 512),
                64,
                16,
                std::slice::from_ref(p),
                9,
                false,
                None,
            )
            .unwrap();
            assert_eq!(&alone[0], want);
        }
        // Random weights still give a prompt-dependent answer (no constant output).
        assert!(together.iter().any(|o| o != &together[0]));
        // Sampled (each request seeded by its index): the host sampler and the device
        // sampler's algorithm draw the same tokens, not the greedy ones.
        let sampling = |device_sampler| OfflineSampling {
            temperature: 1.5,
            top_p: 0.95,
            top_k: 0,
            min_p: 0.0,
            device_sampler,
        };
        let run = |s| generate_offline(&model, cfg(6, 40), 64, 16, &prompts, 9, false, Some(s));
        let (_, host) = run(sampling(false)).unwrap();
        let (_, device) = run(sampling(true)).unwrap();
        assert_eq!(host, device);
        assert_ne!(host, together);
    }

    #[test]
    fn stacked_projections_compute_the_same_logits() {
        use crate::batch::{FlatBatch, LogitsWanted};
        use crate::worker::ModelRunner;
        let split = tiny();
        let mut stacked = tiny();
        assert!(stacked.stack_projections().unwrap());
        assert!(!stacked.stack_projections().unwrap(), "already stacked");
        let p = random_prompts(2, 21, 5, 4000, 4);
        let logits = |m: &LlamaModel| {
            let mut r = ModelRunner::new(m, 8, 16).unwrap();
            let mut b = FlatBatch::default();
            b.push_seq(&p[0], 0, &[0, 1], 16, LogitsWanted::All);
            b.push_seq(&p[1], 0, &[2, 3], 16, LogitsWanted::All);
            r.execute(&b).unwrap().to_vec2::<f32>().unwrap()
        };
        let (a, b) = (logits(&split), logits(&stacked));
        let worst = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "stacked vs split: max abs {worst}");
    }

    #[test]
    fn dummy_weights_are_the_same_for_the_same_seed() {
        let a = tiny();
        let b = tiny();
        let p = random_prompts(1, 10, 5, 4000, 3);
        let c = SchedulerConfig {
            max_num_seqs: 4,
            max_num_batched_tokens: 64,
            max_model_len: 128,
            max_batch_prefill_tokens: None,
        };
        let (_, x) = generate_offline(&a, c.clone(), 8, 16, &p, 5, false, None).unwrap();
        let (_, y) = generate_offline(&b, c, 8, 16, &p, 5, false, None).unwrap();
        assert_eq!(x, y);
    }
}
