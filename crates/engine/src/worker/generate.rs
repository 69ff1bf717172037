//! Greedy generation and teacher-forced log-probs straight over the runner, with each
//! sequence in its own run of KV blocks: the goldens' and tests' reference paths.

use super::runner::ModelRunner;
use crate::batch::{FlatBatch, LogitsWanted};
use crate::error::{EngineError, Result};
use crate::model::LlamaModel;
use crate::sampling::{argmax, log_softmax_rows};

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

/// Greedy generation for several prompts at once in one flat batch per step, each
/// sequence in its own run of KV blocks. Stops a sequence at `max_tokens`, or at a token
/// for which `is_stop` holds (not included).
pub fn greedy_generate(
    model: &LlamaModel,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    is_stop: &dyn Fn(u32) -> bool,
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
    let blocks_per_seq: Vec<usize> = prompts
        .iter()
        .map(|p| (p.len() + max_tokens).div_ceil(block_size))
        .collect();
    let mut tables = Vec::with_capacity(prompts.len());
    let mut next = 0u32;
    for &nb in &blocks_per_seq {
        tables.push((next..next + nb as u32).collect::<Vec<u32>>());
        next += nb as u32;
    }
    let mut runner = ModelRunner::new(model, next as usize, block_size)?;
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut done = vec![max_tokens == 0; prompts.len()];
    let mut first = true;
    let started = std::time::Instant::now();
    let mut prefill_secs = 0.0;
    while done.iter().any(|d| !d) {
        let mut batch = FlatBatch::default();
        let mut rows = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            if done[i] {
                continue;
            }
            if first {
                batch.push_seq(p, 0, &tables[i], block_size, LogitsWanted::Last);
            } else {
                let last = *outputs[i].last().unwrap_or(&p[p.len() - 1]);
                let start = p.len() + outputs[i].len() - 1;
                batch.push_seq(&[last], start, &tables[i], block_size, LogitsWanted::Last);
            }
            batch.set_prompt_len(p.len());
            rows.push(i);
        }
        let logits = runner.execute(&batch)?.to_vec2::<f32>()?;
        if first {
            prefill_secs = started.elapsed().as_secs_f64();
            first = false;
        }
        for (row, &i) in logits.iter().zip(&rows) {
            let tok = argmax(row);
            if is_stop(tok) {
                done[i] = true;
                continue;
            }
            outputs[i].push(tok);
            if outputs[i].len() >= max_tokens {
                done[i] = true;
            }
        }
    }
    Ok(Generation {
        tokens: outputs,
        prefill_secs,
        decode_secs: started.elapsed().as_secs_f64() - prefill_secs,
    })
}

/// Teacher forcing: log-softmax of the logits that predict each token of `completion`
/// after `prompt`, computed in one forward pass.
pub fn teacher_forced_logprobs(
    model: &LlamaModel,
    prompt: &[u32],
    completion: &[u32],
) -> Result<Vec<Vec<f32>>> {
    if prompt.is_empty() {
        return Err(EngineError::InvalidRequest("the prompt is empty".into()));
    }
    let block_size = 16;
    let all: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let nb = all.len().div_ceil(block_size);
    let table: Vec<u32> = (0..nb as u32).collect();
    let mut runner = ModelRunner::new(model, nb, block_size)?;
    let mut batch = FlatBatch::default();
    batch.push_seq(&all, 0, &table, block_size, LogitsWanted::None);
    // The completion's rows as generation computes them (decode order on the CPU).
    batch.set_prompt_len(prompt.len());
    batch.logits_indices = (prompt.len() - 1..all.len() - 1).collect();
    if completion.is_empty() {
        return Ok(Vec::new());
    }
    let logits = runner.execute(&batch)?;
    log_softmax_rows(&logits)
}
