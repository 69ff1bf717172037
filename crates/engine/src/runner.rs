//! Running the model over flat batches, and a plain greedy generation loop over them.

use candle_core::{Tensor, D};

use crate::attention::{AttentionBackend, CpuPagedAttention, KvCacheLayout};
use crate::batch::{FlatBatch, LogitsWanted};
use crate::error::{EngineError, Result};
use crate::model::LlamaModel;

/// The model plus its paged KV cache: executes one flat batch per call.
pub struct ModelRunner<'m> {
    pub model: &'m LlamaModel,
    pub attn: Box<dyn AttentionBackend + 'm>,
}

impl<'m> ModelRunner<'m> {
    /// A runner with a CPU KV cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new_cpu(model: &'m LlamaModel, num_blocks: usize, block_size: usize) -> Self {
        let c = &model.config;
        let layout = KvCacheLayout {
            num_layers: c.num_layers,
            num_blocks,
            block_size,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        Self {
            model,
            attn: Box::new(CpuPagedAttention::new(layout, c.num_heads)),
        }
    }

    pub fn block_size(&self) -> usize {
        self.attn.layout().block_size
    }

    pub fn execute(&mut self, batch: &FlatBatch) -> Result<Tensor> {
        self.model.forward(batch, self.attn.as_mut())
    }
}

/// Row-wise log-softmax in f32, as `[rows][vocab]`.
pub fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    // x - max - log(sum(exp(x - max))): the stable form.
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?.to_vec2::<f32>()?)
}

/// Index of the largest value; the lowest index wins a tie, like llama.cpp's greedy sampler.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
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
    let mut runner = ModelRunner::new_cpu(model, next as usize, block_size);
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
    let mut runner = ModelRunner::new_cpu(model, nb, block_size);
    let mut batch = FlatBatch::default();
    batch.push_seq(&all, 0, &table, block_size, LogitsWanted::None);
    batch.logits_indices = (prompt.len() - 1..all.len() - 1).collect();
    if completion.is_empty() {
        return Ok(Vec::new());
    }
    let logits = runner.execute(&batch)?;
    log_softmax_rows(&logits)
}
