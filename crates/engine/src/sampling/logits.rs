//! Reading logits rows: the greedy choice and log-probabilities.

use candle_core::{Tensor, D};

use crate::error::Result;

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
