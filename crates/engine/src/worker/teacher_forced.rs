//! Teacher-forced log-probs straight over the runner: one forward pass over a prompt and a
//! given completion (the goldens' and sampling tests' reference).

use super::runner::ModelRunner;
use crate::batch::{FlatBatch, LogitsWanted};
use crate::error::{EngineError, Result};
use crate::model::LlamaModel;
use crate::sampling::log_softmax_rows;

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
