//! Log-probabilities of the model's raw logits (vLLM's default: before any sampling
//! processing), for chosen tokens and the top alternatives.

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// 1 + the number of tokens more likely than it (vLLM's `rank`).
    pub rank: usize,
    /// The top alternatives, best first (may include the chosen token).
    pub top: Vec<(u32, f32)>,
}

/// log_softmax of one row, in place, computed in f64 for the normaliser.
pub fn log_softmax_in_place(row: &mut [f32]) {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    for x in row.iter_mut() {
        *x = (*x as f64 - lse) as f32;
    }
}

/// The chosen token's log-prob and the `k` best alternatives from raw logits.
pub fn top_logprobs(logits: &[f32], chosen: u32, k: usize) -> TokenLogprob {
    let mut lp = logits.to_vec();
    log_softmax_in_place(&mut lp);
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k);
    if k > 0 {
        // Partial selection: O(V log k).
        let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b))
        });
        let mut best: Vec<u32> = idx[..k].to_vec();
        best.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
        top = best.into_iter().map(|i| (i, lp[i as usize])).collect();
    }
    let logprob = lp
        .get(chosen as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    TokenLogprob {
        token_id: chosen,
        logprob,
        rank: 1 + lp.iter().filter(|&&x| x > logprob).count(),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_log_softmax() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let t = top_logprobs(&logits, 2, 2);
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        let want = |i: usize| ((logits[i] as f64).exp() / z).ln() as f32;
        assert!((t.logprob - want(2)).abs() < 1e-6);
        assert_eq!(t.top.len(), 2);
        assert_eq!(t.top[0].0, 1);
        assert_eq!(t.top[1].0, 2);
        assert!((t.top[0].1 - want(1)).abs() < 1e-6);
    }
}
